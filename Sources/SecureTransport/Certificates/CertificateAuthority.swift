internal import COpenSSL

/// A certificate and its private key, both in PEM.
///
/// The key is unencrypted PKCS #8: write it where only its owner can read it.
public struct CertificateAndKey: Sendable, Hashable {
    /// The certificate in PEM.
    public var certificatePEM: String
    /// The private key in PEM (PKCS #8, unencrypted).
    public var privateKeyPEM: String

    /// Pairs a certificate with its key.
    ///
    /// - Parameters:
    ///   - certificatePEM: The certificate in PEM.
    ///   - privateKeyPEM: The private key in PEM.
    public init(certificatePEM: String, privateKeyPEM: String) {
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
    }

    /// The certificate, as a configuration takes it.
    public var certificateChain: TLSConfiguration.CertificateSource {
        .pem(Array(self.certificatePEM.utf8))
    }

    /// The private key, as a configuration takes it.
    public var privateKey: TLSConfiguration.PrivateKeySource {
        .pem(Array(self.privateKeyPEM.utf8))
    }
}

/// What a certificate issued by a ``CertificateAuthority`` is for.
public struct CertificateUsage: OptionSet, Sendable, Hashable {
    public let rawValue: Int

    public init(rawValue: Int) {
        self.rawValue = rawValue
    }

    /// A TLS server (extended key usage `serverAuth`): a leader, a server.
    public static let server = CertificateUsage(rawValue: 1)
    /// A TLS client (extended key usage `clientAuth`): a collaborator, a client.
    public static let client = CertificateUsage(rawValue: 2)
}

/// What to put in a certificate a ``CertificateAuthority`` issues.
///
/// smsg/1 binds a node to the first DNS name by default, so put the node's ID first in
/// ``dnsNames``.
public struct CertificateRequest: Sendable, Hashable {
    /// The subject's common name.
    public var commonName: String
    /// DNS names for the subject alternative name, in order. `*.` may start a name.
    public var dnsNames: [String]
    /// IPv4 or IPv6 addresses for the subject alternative name, in text form.
    public var ipAddresses: [String]
    /// URIs for the subject alternative name, such as SPIFFE IDs (`spiffe://example.org/leader`).
    public var uris: [String]
    /// Server, client or both.
    public var usage: CertificateUsage
    /// How long the certificate is valid, from five minutes ago (to allow for clock skew).
    public var validity: Duration

    /// Describes a certificate to issue.
    ///
    /// - Parameters:
    ///   - commonName: The subject's common name.
    ///   - dnsNames: DNS names for the subject alternative name, the node's ID first.
    ///   - ipAddresses: IP addresses for the subject alternative name.
    ///   - uris: URIs for the subject alternative name.
    ///   - usage: Server, client or both.
    ///   - validity: How long the certificate is valid; a year by default.
    public init(
        commonName: String,
        dnsNames: [String] = [],
        ipAddresses: [String] = [],
        uris: [String] = [],
        usage: CertificateUsage = [.server, .client],
        validity: Duration = .seconds(365 * 86_400)
    ) {
        self.commonName = commonName
        self.dnsNames = dnsNames
        self.ipAddresses = ipAddresses
        self.uris = uris
        self.usage = usage
        self.validity = validity
    }

    /// A certificate for the node `name`: its common name, and its first DNS name (the
    /// identity smsg/1 binds it to by default) when it is a DNS name; a server's also names
    /// localhost, 127.0.0.1 and ::1. Extra names follow, without repeats.
    ///
    /// A `name` that is not a DNS name (node ids may hold `_ : @`) can name a client
    /// certificate without other DNS names only: any other DNS name would come first and be
    /// taken for the node's identity. Its identity is then the common name.
    ///
    /// - Parameters:
    ///   - name: The node's id.
    ///   - usage: Server, client or both.
    ///   - dnsNames: More DNS names.
    ///   - ipAddresses: More IP addresses.
    ///   - uris: URIs, such as a SPIFFE ID.
    ///   - validity: How long the certificate is valid.
    /// - Returns: The request.
    /// - Throws: ``TLSError`` with code ``TLSError/Code/invalidCertificate`` when `name` is not
    ///   a DNS name and the certificate would carry another.
    public static func node(
        _ name: String,
        usage: CertificateUsage,
        dnsNames: [String] = [],
        ipAddresses: [String] = [],
        uris: [String] = [],
        validity: Duration = .seconds(365 * 86_400)
    ) throws -> CertificateRequest {
        var names = Self.isDNSName(name) ? [name] : []
        if names.isEmpty, usage.contains(.server) || !dnsNames.isEmpty {
            throw TLSError(
                .invalidCertificate,
                "\"\(name)\" is not a DNS name, so it can name only a client certificate without other DNS "
                    + "names (its identity is then the common name)"
            )
        }
        var addresses: [String] = []
        if usage.contains(.server) {
            names.append("localhost")
            addresses += ["127.0.0.1", "::1"]
        }
        for extra in dnsNames where !names.contains(extra) { names.append(extra) }
        for extra in ipAddresses where !addresses.contains(extra) { addresses.append(extra) }
        return CertificateRequest(
            commonName: name,
            dnsNames: names,
            ipAddresses: addresses,
            uris: uris,
            usage: usage,
            validity: validity
        )
    }

    /// Whether `name` can be a DNS name in a certificate: letters, digits and hyphens in
    /// labels of 1 to 63 bytes, 253 bytes in all; the first label may be `*`.
    ///
    /// - Parameter name: The name to check.
    /// - Returns: `true` when ``CertificateAuthority/issue(_:)`` takes it.
    public static func isDNSName(_ name: String) -> Bool {
        CertificateBuilder.isDNSName(name)
    }
}

/// A certificate authority that issues EC P-256 certificates with OpenSSL, for development,
/// tests and small deployments that keep their own CA.
///
/// ```swift
/// let authority = try CertificateAuthority(commonName: "example CA")
/// let leader = try authority.issue(CertificateRequest(
///     commonName: "leader", dnsNames: ["leader", "localhost"], ipAddresses: ["127.0.0.1"]
/// ))
/// let configuration = TLSConfiguration.makeServerConfiguration(
///     certificateChain: leader.certificateChain, privateKey: leader.privateKey
/// )
/// ```
///
/// Keys are made by OpenSSL's random generator; signatures are ECDSA with SHA-256. Serial
/// numbers carry 126 random bits.
public struct CertificateAuthority: Sendable {
    /// The authority's own certificate and key.
    public let root: CertificateAndKey

    /// Makes a new self-signed authority with a fresh key.
    ///
    /// - Parameters:
    ///   - commonName: The authority's common name.
    ///   - validity: How long the authority is valid; five years by default.
    /// - Throws: ``TLSError`` with code ``TLSError/Code/invalidCertificate`` for a bad name, or
    ///   ``TLSError/Code/internalError`` when OpenSSL fails.
    public init(commonName: String, validity: Duration = .seconds(5 * 365 * 86_400)) throws {
        self.root = try CertificateBuilder.makeAuthority(commonName: commonName, validity: validity)
    }

    /// Takes an existing authority's certificate and key, checking that they belong together
    /// and that the certificate is a CA.
    ///
    /// - Parameters:
    ///   - root: The authority's certificate and private key in PEM.
    ///   - passphrase: The key's passphrase, if it is encrypted.
    /// - Throws: ``TLSError`` when either does not load, they do not match, or the
    ///   certificate is not a CA.
    public init(root: CertificateAndKey, passphrase: String? = nil) throws {
        try CertificateBuilder.checkAuthority(root, passphrase: passphrase)
        if let passphrase {
            // Keep the key decrypted in memory only, so issuing needs no passphrase.
            let key = try PEMReader.privateKey(from: .bytes(Array(root.privateKeyPEM.utf8)), passphrase: passphrase)
            defer { EVP_PKEY_free(key) }
            self.root = CertificateAndKey(
                certificatePEM: root.certificatePEM,
                privateKeyPEM: try CertificateBuilder.pem(privateKey: key)
            )
        } else {
            self.root = root
        }
    }

    /// The authority's certificate as trust roots for a configuration.
    public var trustRoots: TLSConfiguration.TrustRoots {
        .pem(Array(self.root.certificatePEM.utf8))
    }

    /// Issues a certificate with a fresh P-256 key.
    ///
    /// - Parameter request: The names, usage and validity to put in the certificate.
    /// - Returns: The signed certificate and its new key.
    /// - Throws: ``TLSError`` with code ``TLSError/Code/invalidCertificate`` naming a DNS name,
    ///   address or URI that cannot go in a certificate, or ``TLSError/Code/internalError``.
    public func issue(_ request: CertificateRequest) throws -> CertificateAndKey {
        try CertificateBuilder.issue(request, by: self.root)
    }
}
