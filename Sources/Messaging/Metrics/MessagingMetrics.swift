public import CoreMetrics

/// The counters and gauges a server keeps, made from a swift-metrics factory.
///
/// Names follow Prometheus conventions; the factory decides where they go (the process-wide
/// `MetricsSystem` by default, or a Prometheus registry served by ``PrometheusEndpoint``).
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
    }
}
