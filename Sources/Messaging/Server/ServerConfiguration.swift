import NIOCore
public import SecureTransport

/// Settings of a ``SecureMessagingServer``.
public struct ServerConfiguration: Sendable, Hashable {
    /// The address to listen on.
    public var host: String
    /// The port to listen on; 0 picks a free one (see ``SecureMessagingServer/listeningAddress()``).
    public var port: Int
    /// The server's `node_id` in its HELLO.
    public var nodeID: String = "server"
    /// The server's `role` in its HELLO.
    public var role: String = "server"
    /// The server's HELLO `metadata`.
    public var metadata: [String: String] = [:]
    /// Protocol settings of every session.
    public var session = SessionConfiguration()
    /// The most connections served at once; one more gets ERROR SERVER_BUSY.
    public var maxConnections: Int = 10_000
    /// With TLS client certificates: refuse (UNAUTHORIZED) a client whose HELLO `node_id` is
    /// not its certificate's identity (see ``identityMapping``).
    public var requireCertificateIdentity: Bool = false
    /// How a client certificate names its node: the first SAN DNS name (else the subject CN)
    /// by default; a URI SAN such as a SPIFFE ID, the CN only, or your own closure.
    public var identityMapping: IdentityMapping = .firstDNSName

    public init(host: String = "127.0.0.1", port: Int = 0) {
        self.host = host
        self.port = port
    }
}

/// Settings of a ``SecureClient``.
public struct ClientConfiguration: Sendable, Hashable {
    /// The client's `node_id`: 1 to 128 of `A–Z a–z 0–9 . _ : @ -`.
    public var nodeID: String
    /// The client's `role`.
    public var role: String = "client"
    /// The client's HELLO `metadata`.
    public var metadata: [String: String] = [:]
    /// Protocol settings.
    public var session = SessionConfiguration()
    /// How long the TCP connect may take.
    public var connectTimeout: Duration = .seconds(10)

    public init(nodeID: String) {
        self.nodeID = nodeID
    }
}

extension ServerConfiguration {
    /// How each connection sizes its receive buffer: from 512 bytes, doubling while reads fill
    /// it, up to 64 KiB. The channel keeps its last buffer for the next read, so an idle
    /// session holds 512 bytes instead of NIO's default 2 KiB; a busy one grows in a few reads.
    static let receiveBufferAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 262_144)
}
