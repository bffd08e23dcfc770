import NIOCore

/// The protocol settings of a session, for servers and clients alike.
public struct SessionConfiguration: Sendable, Hashable {
    /// How long this side may stay silent before it sends PING. Announced as `heartbeat_ms`.
    public var heartbeatInterval: Duration = .seconds(5)
    /// Server: how long a client has to send HELLO once the transport is ready.
    /// Client: how long it waits for the server's HELLO.
    public var helloTimeout: Duration = .seconds(5)
    /// The largest payload accepted. Announced as `max_frame`; at least 65,536.
    public var maxFrame: Int = Frame.defaultMaxFrame
    /// How long a graceful close waits for the peer's GOODBYE.
    public var drainTimeout: Duration = .seconds(5)
    /// Watermarks, hard limits, slow consumers and rate limits.
    public var flowControl = FlowControlConfiguration()
    /// How long a request waits for its RESPONSE unless the call says otherwise.
    public var requestTimeout: Duration = .seconds(30)
    /// The extensions this side lists in its HELLO (all it supports, by default); each is in
    /// force on a session whose peer lists it too. Empty: a plain smsg/1 peer, whose HELLO has
    /// no `extensions` key.
    public var extensions: ProtocolExtensions = .all

    public init() {}

    /// Our HELLO with these settings announced.
    func makeHello(nodeID: String, role: String, metadata: [String: String], sessionID: String? = nil) -> Hello {
        Hello(
            nodeID: nodeID,
            role: role,
            // heartbeat_ms must be positive: an interval under a millisecond is announced as 1.
            heartbeatMilliseconds: max(1, Int(TimeAmount(self.heartbeatInterval).nanoseconds / 1_000_000)),
            maxFrame: self.maxFrame,
            metadata: metadata,
            sessionID: sessionID,
            extensions: self.extensions.isEmpty ? nil : self.extensions.names
        )
    }
}
