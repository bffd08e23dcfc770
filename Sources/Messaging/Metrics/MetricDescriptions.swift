/// What each metric of the package counts: the `# HELP` text an exposition gives it (the
/// swift-metrics API carries none). The `MetricsEndpoint` library's `PrometheusEndpoint` writes
/// these.
public enum MetricDescriptions {
    /// Every metric the package makes, by name.
    public static let all: [String: String] = [
        "smsg_sessions_active": "Connections live now (handshaking, open or draining).",
        "smsg_sessions_total": "Connections accepted.",
        "smsg_frames_received_total": "smsg/1 frames received.",
        "smsg_frames_sent_total": "smsg/1 frames sent.",
        "smsg_bytes_received_total": "Frame bytes (header and payload) received.",
        "smsg_bytes_sent_total": "Frame bytes (header and payload) sent.",
        "smsg_handshake_failures_total": "TLS handshakes that failed.",
        "smsg_protocol_errors_total": "ERRORs sent because a peer broke the protocol.",
        "smsg_backpressure_events_total":
            "FLOW SLOW_DOWN sent, and sends held or refused because the peer could not take them.",
        "smsg_slow_consumers_total": "Sessions closed because the peer read nothing for the slow-consumer timeout.",
        "smsg_inbound_queued_bytes": "DATA payload bytes received and not yet taken by the application.",
        "smsg_outbound_queued_bytes": "Bytes waiting in channels' outbound buffers.",
        "smsg_refusals_total": "Connections refused, by reason.",
        "smsg_leader_active": "1 while this leader holds the election's leadership, else 0.",
        "smsg_leader_term": "The election term this leader holds or last held.",
        "smsg_handler_failures_total": "Handlers that threw an error that is not a request outcome, by kind.",
        "smsg_requests_total": "Requests served or made, by side, topic and outcome code.",
        "smsg_request_duration_seconds":
            "Time from a request's arrival to its answer (served) or from the call to its outcome (made).",
        "smsg_unhandled_total": "DATA messages dropped because no handler serves their topic.",
        "smsg_dispatch_retries_total": "Dispatched idempotent requests tried again on another collaborator.",
        "smsg_dispatch_waiting": "Dispatched requests waiting for a collaborator with room.",
        "smsg_pool_in_use": "Pooled connections lent out now.",
        "smsg_pool_idle": "Pooled connections open and free now.",
        "smsg_pool_waiters": "Tasks waiting for a pooled connection.",
        "smsg_pool_replaced_total": "Pooled connections found dead and replaced.",
    ]
}
