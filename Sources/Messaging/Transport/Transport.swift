import NIOConcurrencyHelpers
public import NIOCore
public import SecureTransport

/// How bytes get between the two sides: the one place plaintext and TLS differ.
///
/// A transport only sets up the bottom of a new channel's pipeline. Everything above it —
/// frames, sessions, flow control, cleanup — is the same code for both.
public protocol MessagingTransport: Sendable {
    /// Whether the session must wait for a TLS handshake before it is ready.
    var isSecure: Bool { get }

    /// Adds the transport's handlers to a new channel. Called on the channel's event loop.
    ///
    /// - Parameters:
    ///   - channel: the new channel, not yet active.
    ///   - serverHostname: for a client, the name to verify the server against.
    func configure(_ channel: any Channel, serverHostname: String?) throws
}

/// Plain TCP: nothing to add.
public struct PlainTCPTransport: MessagingTransport {
    public init() {}

    public var isSecure: Bool { false }

    public func configure(_ channel: any Channel, serverHostname: String?) throws {}
}

/// TLS over the system's OpenSSL, with one shared `TLSContext`.
///
/// The context can be replaced while connections are open (``reload()``, ``use(_:)``): new
/// connections take the new one, connections already open keep theirs. Copies of a transport
/// share its context.
public struct TLSTransport: MessagingTransport {
    /// The context new connections use.
    public var context: TLSContext { self.current.withLockedValue { $0 } }
    /// How long the TLS handshake may take, from the TCP accept or connect.
    public var handshakeTimeout: Duration

    private let current: NIOLockedValueBox<TLSContext>

    public init(context: TLSContext, handshakeTimeout: Duration = TLSHandler.defaultHandshakeTimeout) {
        self.current = NIOLockedValueBox(context)
        self.handshakeTimeout = handshakeTimeout
    }

    /// Builds the context from `configuration`.
    public init(
        configuration: TLSConfiguration,
        handshakeTimeout: Duration = TLSHandler.defaultHandshakeTimeout
    ) throws {
        self.init(context: try TLSContext(configuration: configuration), handshakeTimeout: handshakeTimeout)
    }

    /// Builds a new context from the current one's configuration, reading its certificate,
    /// key, trust roots and CRLs from disk again, and uses it for new connections.
    ///
    /// - Returns: the new context.
    /// - Throws: `TLSError` when the files cannot be used (a broken certificate, a key that
    ///   does not match it, an unreadable CRL); the current context then stays in use.
    @discardableResult
    public func reload() throws -> TLSContext {
        let fresh = try TLSContext(configuration: self.context.configuration)
        self.use(fresh)
        return fresh
    }

    /// Uses `context` for new connections from now on.
    public func use(_ context: TLSContext) {
        self.current.withLockedValue { $0 = context }
    }

    public var isSecure: Bool { true }

    public func configure(_ channel: any Channel, serverHostname: String?) throws {
        try channel.pipeline.syncOperations.addHandler(
            TLSHandler(context: self.context, serverHostname: serverHostname, handshakeTimeout: self.handshakeTimeout)
        )
    }
}

extension Channel {
    /// Adds a session handler (which decodes and encodes frames itself) above whatever the
    /// transport added.
    func addSessionHandlers(_ handler: SessionHandler) throws {
        try self.pipeline.syncOperations.addHandler(handler)
    }
}
