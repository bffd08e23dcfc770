public import CoreMetrics

/// The counters and gauges a server keeps, made from a swift-metrics factory.
///
/// Names follow Prometheus conventions; the factory decides where they go (the process-wide
/// `MetricsSystem` by default, or a Prometheus registry, which the `MetricsEndpoint` library's
/// `PrometheusEndpoint` serves).
public struct MessagingMetrics: Sendable {
    /// Connections currently live (handshaking, open or draining).
    let sessionsActive: Meter
    /// Connections accepted.
    let sessionsTotal: Counter
    let framesReceived: Counter
    let framesSent: Counter
    /// Frame bytes (header and payload) received.
    let bytesReceived: Counter
    /// Frame bytes (header and payload) sent.
    let bytesSent: Counter
    /// TLS handshakes that failed.
    let handshakeFailures: Counter
    /// ERRORs sent because the peer broke the protocol (PROTOCOL_ERROR, FRAME_TOO_LARGE,
    /// UNSUPPORTED_VERSION).
    let protocolErrors: Counter
    /// FLOW SLOW_DOWN sent, and sends refused or held because the peer could not take them.
    let backpressureEvents: Counter
    /// Sessions closed because the peer read nothing for the slow-consumer timeout.
    let slowConsumers: Counter
    /// DATA payload bytes received and not yet taken by applications.
    let inboundQueuedBytes: Meter
    /// Bytes waiting in channels' outbound buffers (sampled at flushes and heartbeats).
    let outboundQueuedBytes: Meter
    /// `smsg_refusals_total{reason=...}`: one counter per reason.
    let refusals: [RefusalReason: Counter]
    /// Where they go: layers above (the leader's election gauges) make theirs there too.
    package let factory: any MetricsFactory

    /// Makes the metrics with `factory` (default: the bootstrapped `MetricsSystem`).
    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        self.sessionsActive = Meter(label: "smsg_sessions_active", factory: factory)
        self.sessionsTotal = Counter(label: "smsg_sessions_total", factory: factory)
        self.framesReceived = Counter(label: "smsg_frames_received_total", factory: factory)
        self.framesSent = Counter(label: "smsg_frames_sent_total", factory: factory)
        self.bytesReceived = Counter(label: "smsg_bytes_received_total", factory: factory)
        self.bytesSent = Counter(label: "smsg_bytes_sent_total", factory: factory)
        self.handshakeFailures = Counter(label: "smsg_handshake_failures_total", factory: factory)
        self.protocolErrors = Counter(label: "smsg_protocol_errors_total", factory: factory)
        self.backpressureEvents = Counter(label: "smsg_backpressure_events_total", factory: factory)
        self.slowConsumers = Counter(label: "smsg_slow_consumers_total", factory: factory)
        self.inboundQueuedBytes = Meter(label: "smsg_inbound_queued_bytes", factory: factory)
        self.outboundQueuedBytes = Meter(label: "smsg_outbound_queued_bytes", factory: factory)
        var refusals: [RefusalReason: Counter] = [:]
        for reason in RefusalReason.allCases {
            refusals[reason] = Counter(
                label: "smsg_refusals_total",
                dimensions: [("reason", reason.rawValue)],
                factory: factory
            )
        }
        self.refusals = refusals
    }

    /// Counts a connection the server refused.
    package func refused(_ reason: RefusalReason) {
        self.refusals[reason]?.increment()
    }
}

/// Why a server refused a connection: the `reason` label of `smsg_refusals_total`, and the
/// `reason` of the notice the server logs with the peer's address.
public enum RefusalReason: String, Sendable, Hashable, CaseIterable {
    /// The TLS handshake failed for another reason (no common version or cipher, bad records).
    case handshakeFailed = "handshake_failed"
    /// The TLS handshake did not finish within its timeout.
    case handshakeTimeout = "handshake_timeout"
    /// The peer closed the connection during the TLS handshake (it may have refused our
    /// certificate, or be a health check that only connects). Logged at info, not notice.
    case closedDuringHandshake = "closed_during_handshake"
    /// The peer sent a fatal TLS alert during the handshake.
    case alertReceived = "alert_received"
    /// A client certificate was required and none came.
    case certificateMissing = "certificate_missing"
    /// The client certificate did not verify (unknown CA, expired, revoked).
    case certificateUntrusted = "certificate_untrusted"
    /// The peer offered ALPN without smsg/1.
    case noApplicationProtocol = "no_application_protocol"
    /// The HELLO `node_id` is not the identity in the client certificate.
    case identityMismatch = "identity_mismatch"
    /// The node is not on the leader's allow-list.
    case notAllowed = "not_allowed"
    /// The server was at its connection limit (ERROR SERVER_BUSY).
    case connectionLimit = "connection_limit"
}
