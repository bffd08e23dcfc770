import ArgumentParser
import Cluster
import EtcdElection
import Foundation
import Logging
import Messaging
import SecureTransport

/// The election flags `leader` and `collaborator` share: etcd's endpoints, the election's
/// name, the lease, and the TLS settings for `https://` endpoints.
struct ElectionOptions: ParsableArguments {
    static let keys = ["etcd", "election", "lease_ttl", "etcd_ca", "etcd_cert", "etcd_key"]

    @Option(
        help: "etcd client URLs, comma-separated (http://HOST:PORT or https://HOST:PORT): follow an election there."
    )
    var etcd: String?

    @Option(help: "The election's name (with --etcd).")
    var election: String?

    @Option(help: "Seconds a leader's etcd lease lives without renewal (default 5).")
    var leaseTtl: String?

    @Option(help: "CA certificates (PEM) that etcd's certificate must chain to (https endpoints).")
    var etcdCa: String?

    @Option(help: "Client certificate (PEM) for etcd's mutual TLS.")
    var etcdCert: String?

    @Option(help: "Client private key (PEM) for etcd's mutual TLS.")
    var etcdKey: String?

    /// The election configuration from flags, environment and config file; `nil` when no etcd
    /// endpoint is given anywhere.
    func configuration(
        from source: SettingsSource,
        effective: inout EffectiveSettings
    ) throws
        -> EtcdElectionConfiguration?
    {
        guard let endpoints = try source.parsed("etcd", Self.endpoints) else {
            for key in Self.keys.dropFirst() where try source.string(key) != nil {
                throw ValidationError("\(key) is for an election: give the etcd endpoints too (--etcd)")
            }
            return nil
        }
        let name = try source.requiredString("election")
        var configuration = EtcdElectionConfiguration(endpoints: endpoints, electionName: name)
        let ttl = try source.parsed("lease_ttl") { text -> Int in
            guard let seconds = Int(text), (1...3600).contains(seconds) else {
                throw ValidationError("must be whole seconds from 1 to 3600, got \"\(text)\"")
            }
            return seconds
        }
        configuration.leaseTTL = .seconds(ttl ?? 5)
        let ca = try source.string("etcd_ca")?.0
        let cert = try source.string("etcd_cert")?.0
        let key = try source.string("etcd_key")?.0
        guard (cert == nil) == (key == nil) else {
            throw ValidationError("etcd_cert and etcd_key go together")
        }
        if endpoints.contains(where: { $0.hasPrefix("https://") }) {
            guard let ca else {
                throw ValidationError("https etcd endpoints need etcd_ca (--etcd-ca)")
            }
            var tls = TLSConfiguration.makeClientConfiguration(trustRoots: .file(ca))
            if let cert, let key {
                tls.certificateChain = .file(cert)
                tls.privateKey = .file(key)
            }
            do {
                // Loaded once here, so that --print-config refuses files that do not load too.
                _ = try TLSContext(configuration: tls)
            } catch let error as TLSError {
                throw ValidationError("TLS configuration for etcd refused: \(error.reason)")
            }
            configuration.tls = tls
        }
        effective.set("etcd", endpoints.joined(separator: ","))
        effective.set("election", name)
        effective.set("lease_ttl", "\(ttl ?? 5)")
        effective.set("etcd_ca", ca)
        effective.set("etcd_cert", cert)
        effective.set("etcd_key", key)
        return configuration
    }

    /// The flags given, by key.
    var flagValues: [String: String?] {
        [
            "etcd": self.etcd, "election": self.election, "lease_ttl": self.leaseTtl, "etcd_ca": self.etcdCa,
            "etcd_cert": self.etcdCert, "etcd_key": self.etcdKey,
        ]
    }

    private static func endpoints(_ text: String) throws -> [String] {
        let urls = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !urls.isEmpty else {
            throw ValidationError("expected etcd URLs, comma-separated")
        }
        for url in urls {
            guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
                throw ValidationError("\"\(url)\" is not an http:// or https:// URL")
            }
        }
        return urls
    }

    /// Makes the election, turning a bad endpoint into a usage error.
    static func makeElection(_ configuration: EtcdElectionConfiguration, logger: Logger) throws -> EtcdLeaderElection {
        do {
            return try EtcdLeaderElection(configuration: configuration, logger: logger)
        } catch let error as EtcdError {
            if let tls = error.cause as? TLSError {
                throw ValidationError("TLS configuration for etcd refused: \(tls.reason)")
            }
            throw ValidationError("\(error)")
        }
    }
}
