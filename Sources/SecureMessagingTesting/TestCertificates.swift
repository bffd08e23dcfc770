public import SecureMessaging

/// A fresh certificate authority made in process, and the TLS transports tests need from it:
/// a leader (or server) that requires client certificates, and collaborators (or clients)
/// each with a certificate naming its node.
///
/// Keys and certificates stay in memory; nothing is written to disk and no openssl command
/// runs. Each instance has its own authority, so tests cannot trust each other's peers.
public struct TestCertificates: Sendable {
    /// The authority that signs every certificate here.
    public let authority: CertificateAuthority

    /// Makes a new authority.
    ///
    /// - Throws: `TLSError` if OpenSSL cannot make a key.
    public init() throws {
        self.authority = try CertificateAuthority(commonName: "smsg test CA", validity: .seconds(7 * 86_400))
    }

    /// A certificate for `name`: `name` first among its DNS names (its identity), and
    /// localhost, 127.0.0.1 and ::1 for a server.
    ///
    /// - Parameters:
    ///   - name: The node's name; its first DNS name when it is a DNS name, and its common name.
    ///   - usage: Server, client or both.
    ///   - uris: URIs to add, such as a SPIFFE ID.
    /// - Returns: The certificate and its key.
    /// - Throws: `TLSError` for a name a certificate cannot hold, or a server certificate for a
    ///   name that is not a DNS name (`localhost` would come first and be taken for its
    ///   identity).
    public func issue(_ name: String, usage: CertificateUsage, uris: [String] = []) throws -> CertificateAndKey {
        try self.authority.issue(
            CertificateRequest.node(name, usage: usage, uris: uris, validity: .seconds(7 * 86_400))
        )
    }

    /// A transport for a leader or server: its own certificate, client certificates required
    /// and checked against this authority.
    ///
    /// - Parameter name: The server's name in its certificate.
    /// - Returns: The transport.
    /// - Throws: `TLSError` if the configuration does not load.
    public func serverTransport(name: String = "leader") throws -> TLSTransport {
        let issued = try self.issue(name, usage: [.server, .client])
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: issued.certificateChain,
            privateKey: issued.privateKey
        )
        configuration.trustRoots = self.authority.trustRoots
        configuration.clientAuthentication = .required
        return try TLSTransport(configuration: configuration)
    }

    /// A transport for a collaborator or client that presents a certificate naming `nodeID`
    /// (or none) and trusts this authority. Connect with server hostname `localhost`.
    ///
    /// - Parameter nodeID: The node the certificate names; `nil` for no client certificate.
    /// - Returns: The transport.
    /// - Throws: `TLSError` if the configuration does not load.
    public func clientTransport(nodeID: String?) throws -> TLSTransport {
        var configuration = TLSConfiguration.makeClientConfiguration(trustRoots: self.authority.trustRoots)
        if let nodeID {
            let issued = try self.issue(nodeID, usage: .client)
            configuration.certificateChain = issued.certificateChain
            configuration.privateKey = issued.privateKey
        }
        return try TLSTransport(configuration: configuration)
    }
}
