import Foundation
import NIOCore
import Testing

@testable import SecureTransport

/// The certificates made by `scripts/gen-certs.sh`, generated on first use if missing.
enum TestCertificates {
    /// The repository root, found from this file's path.
    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The certificate directory; generating it (once per process) if needed.
    static let directory: String = {
        let directory = ProcessInfo.processInfo.environment["SMSG_CERTS"] ?? "\(repositoryRoot)/certs"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["\(repositoryRoot)/scripts/gen-certs.sh", directory]
        process.standardOutput = FileHandle.nullDevice
        do {
            try process.run()
            process.waitUntilExit()
        } catch {
            fatalError("cannot run scripts/gen-certs.sh: \(error)")
        }
        precondition(process.terminationStatus == 0, "scripts/gen-certs.sh failed")
        return directory
    }()

    static func path(_ name: String) -> String {
        "\(directory)/\(name)"
    }

    static func serverConfiguration(
        cert: String = "server",
        clientAuthentication: TLSConfiguration.ClientAuthentication = .none
    ) -> TLSConfiguration {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: .file(path("\(cert).pem")),
            privateKey: .file(path("\(cert).key"))
        )
        if clientAuthentication != .none {
            config.trustRoots = .file(path("ca.pem"))
            config.clientAuthentication = clientAuthentication
        }
        return config
    }

    static func clientConfiguration(cert: String? = nil, ca: String = "ca") -> TLSConfiguration {
        var config = TLSConfiguration.makeClientConfiguration(trustRoots: .file(path("\(ca).pem")))
        if let cert {
            config.certificateChain = .file(path("\(cert).pem"))
            config.privateKey = .file(path("\(cert).key"))
        }
        return config
    }
}
