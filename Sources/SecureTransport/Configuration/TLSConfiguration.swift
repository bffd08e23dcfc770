/// Everything needed to build a ``TLSContext``: identity, trust, versions, suites, ALPN.
///
/// A value type. Start from one of the factories, which apply the project's defaults
/// (Mozilla's "intermediate" profile: TLS 1.2 minimum, ECDHE with AEAD suites only, groups
/// X25519, P-256 and P-384, ALPN `smsg/1`), then adjust fields as needed:
///
/// ```swift
/// var config = TLSConfiguration.makeServerConfiguration(
///     certificateChain: .file("certs/server.pem"),
///     privateKey: .file("certs/server.key")
/// )
/// config.minimumVersion = .tls13
/// let context = try TLSContext(configuration: config)
/// ```
public struct TLSConfiguration: Sendable, Hashable {
    /// Which side of the handshake a context is for.
    public enum Role: Sendable, Hashable {
        case client
        case server
    }

    /// A protocol version.
    public enum Version: Sendable, Hashable, Comparable {
        case tls12
        case tls13
    }

    /// Whether a server asks for, and insists on, a client certificate.
    public enum ClientAuthentication: Sendable, Hashable {
        /// No client certificate is requested.
        case none
        /// A client certificate is requested and verified if sent, but not required.
        case optional
        /// A verified client certificate is required; a client without one fails the handshake.
        case required
    }

    /// Where a certificate chain comes from. The first certificate is the leaf; the rest are
    /// intermediates sent with it.
    public enum CertificateSource: Sendable, Hashable {
        /// A PEM file holding the leaf followed by any intermediates.
        case file(String)
        /// PEM text holding the leaf followed by any intermediates.
        case pem([UInt8])
    }

    /// Where a private key comes from, in PEM (PKCS#8, or the traditional RSA/EC forms).
    public enum PrivateKeySource: Sendable, Hashable {
        /// A PEM file. An encrypted key needs ``TLSConfiguration/privateKeyPassphrase``.
        case file(String)
        /// PEM text. An encrypted key needs ``TLSConfiguration/privateKeyPassphrase``.
        case pem([UInt8])
    }

    /// Which certificate authorities the peer's chain must lead to.
    public enum TrustRoots: Sendable, Hashable {
        /// The operating system's default store (as OpenSSL is configured to find it).
        case system
        /// A PEM file with one or more CA certificates.
        case file(String)
        /// A directory of CA certificates named by subject hash (`openssl rehash`).
        case directory(String)
        /// PEM text with one or more CA certificates.
        case pem([UInt8])
    }

    /// The side this configuration is for.
    public var role: Role
    /// The certificate chain presented to the peer. Required for servers, optional for clients.
    public var certificateChain: CertificateSource?
    /// The private key of the leaf certificate.
    public var privateKey: PrivateKeySource?
    /// The passphrase of an encrypted private key. Never logged.
    public var privateKeyPassphrase: String?
    /// The CAs the peer's certificate is verified against. `nil` means no verification roots:
    /// a client then cannot verify a server, and a server cannot verify client certificates.
    public var trustRoots: TrustRoots?
    /// Whether a client verifies the server's chain and host name. On by default; turn it off
    /// only for tests against a server whose certificate cannot be verified.
    public var verifyPeer: Bool
    /// Whether a server requests a client certificate.
    public var clientAuthentication: ClientAuthentication
    /// The lowest protocol version accepted. TLS 1.2 by default.
    public var minimumVersion: Version
    /// The highest protocol version offered. TLS 1.3 by default.
    public var maximumVersion: Version
    /// TLS 1.2 cipher suites, in OpenSSL's cipher-list syntax. Restricted to ECDHE with AEAD.
    public var tls12CipherSuites: String
    /// TLS 1.3 cipher suites, colon separated (e.g. `TLS_AES_128_GCM_SHA256`).
    public var tls13CipherSuites: String
    /// Key-exchange groups, colon separated, most preferred first.
    public var groups: String
    /// Application protocols offered (client) or accepted (server), most preferred first.
    /// A server whose list is not empty refuses a client that offers ALPN without any of them.
    public var applicationProtocols: [String]
    /// Whether TLS session resumption is enabled: a server issues session tickets, a client
    /// keeps the latest session per server and offers it on the next connection.
    public var sessionResumption: Bool
    /// Certificate revocation lists (a PEM file with one or more CRLs) checked at every
    /// handshake: a peer whose leaf certificate is revoked is refused. Needs ``trustRoots``; the
    /// CRLs must be issued by those roots. Only the leaf is checked.
    public var crlFile: String?
    /// A file to which the secrets of every connection are appended, in the NSS key log format
    /// that `SSLKEYLOGFILE` and Wireshark use. Off by default, and for debugging only: anyone
    /// holding the file can decrypt the traffic. Building a context with it prints a warning.
    public var keyLogFile: String?

    /// The default TLS 1.2 suites: ECDHE key exchange with AES-GCM or ChaCha20-Poly1305.
    public static let defaultTLS12CipherSuites =
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        + "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        + "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    /// The default TLS 1.3 suites.
    public static let defaultTLS13CipherSuites =
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    /// The default key-exchange groups.
    public static let defaultGroups = "X25519:P-256:P-384"
    /// The ALPN identifier of the smsg/1 protocol.
    public static let smsgApplicationProtocol = "smsg/1"

    /// Creates a configuration with the project's defaults for `role`.
    public init(role: Role) {
        self.role = role
        self.certificateChain = nil
        self.privateKey = nil
        self.privateKeyPassphrase = nil
        self.trustRoots = nil
        self.verifyPeer = true
        self.clientAuthentication = .none
        self.minimumVersion = .tls12
        self.maximumVersion = .tls13
        self.tls12CipherSuites = Self.defaultTLS12CipherSuites
        self.tls13CipherSuites = Self.defaultTLS13CipherSuites
        self.groups = Self.defaultGroups
        self.applicationProtocols = [Self.smsgApplicationProtocol]
        self.sessionResumption = true
        self.crlFile = nil
        self.keyLogFile = nil
    }
}

extension TLSConfiguration {
    /// A client that verifies the server against `trustRoots` (the system store by default).
    public static func makeClientConfiguration(trustRoots: TrustRoots = .system) -> TLSConfiguration {
        var config = TLSConfiguration(role: .client)
        config.trustRoots = trustRoots
        return config
    }

    /// A client that presents a certificate (mutual TLS) and verifies the server against
    /// `trustRoots`.
    public static func makeClientConfiguration(
        certificateChain: CertificateSource,
        privateKey: PrivateKeySource,
        trustRoots: TrustRoots
    ) -> TLSConfiguration {
        var config = TLSConfiguration.makeClientConfiguration(trustRoots: trustRoots)
        config.certificateChain = certificateChain
        config.privateKey = privateKey
        return config
    }

    /// A server that presents `certificateChain` and asks for no client certificate.
    public static func makeServerConfiguration(
        certificateChain: CertificateSource,
        privateKey: PrivateKeySource
    ) -> TLSConfiguration {
        var config = TLSConfiguration(role: .server)
        config.certificateChain = certificateChain
        config.privateKey = privateKey
        return config
    }

    /// A server that requires (or, with `clientAuthentication: .optional`, accepts) client
    /// certificates issued by `trustRoots`.
    public static func makeMutualTLSServerConfiguration(
        certificateChain: CertificateSource,
        privateKey: PrivateKeySource,
        trustRoots: TrustRoots,
        clientAuthentication: ClientAuthentication = .required
    ) -> TLSConfiguration {
        var config = TLSConfiguration.makeServerConfiguration(
            certificateChain: certificateChain,
            privateKey: privateKey
        )
        config.trustRoots = trustRoots
        config.clientAuthentication = clientAuthentication
        return config
    }
}
