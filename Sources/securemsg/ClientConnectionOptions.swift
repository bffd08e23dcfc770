import ArgumentParser
import Messaging
import SecureTransport

/// Where a bench client connects and with which TLS settings (`bench client`, `bench push`).
struct ClientConnectionOptions: ParsableArguments {
    @Option(help: "Server address, HOST:PORT.")
    var connect: String

    @Option(help: "CA certificates (PEM) to verify the server. Required unless --plaintext.")
    var ca: String?

    @Option(help: "Client certificate chain (PEM), for mutual TLS.")
    var cert: String?

    @Option(help: "Client private key (PEM), for mutual TLS.")
    var key: String?

    @Flag(help: "Plain TCP instead of TLS.")
    var plaintext = false

    func validate() throws {
        _ = try HostPort(self.connect)
        guard self.plaintext || self.ca != nil else { throw ValidationError("--ca is required unless --plaintext") }
        guard (self.cert == nil) == (self.key == nil) else { throw ValidationError("--cert and --key go together") }
    }

    var address: HostPort {
        get throws { try HostPort(self.connect) }
    }

    /// Plain TCP, or TLS verifying the server against `--ca` (with `--cert`/`--key` for
    /// mutual TLS), after `adjust` has had its say on the configuration.
    func makeTransport(_ adjust: (inout TLSConfiguration) -> Void = { _ in }) throws -> any MessagingTransport {
        guard !self.plaintext, let ca = self.ca else {
            return PlainTCPTransport()
        }
        var tls = TLSConfiguration.makeClientConfiguration(trustRoots: .file(ca))
        if let cert = self.cert, let key = self.key {
            tls.certificateChain = .file(cert)
            tls.privateKey = .file(key)
        }
        adjust(&tls)
        do {
            return try TLSTransport(configuration: tls)
        } catch let error as TLSError {
            throw ValidationError("TLS configuration refused: \(error.reason)")
        }
    }
}
