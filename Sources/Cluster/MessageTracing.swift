public import Messaging
public import Tracing

/// Puts a trace context into a message's headers, as the tracer names its fields (`traceparent`
/// and `tracestate` for W3C trace context). Names are lowercased; names the protocol reserves
/// (`smsg-`) or cannot carry are left out.
public struct MessageHeadersInjector: Injector {
    public init() {}

    public func inject(_ value: String, forKey key: String, into carrier: inout MessageHeaders) {
        let name = key.lowercased()
        guard MessageHeaders.isValidName(name), !name.hasPrefix("smsg-") else { return }
        carrier[name] = value
    }
}

/// Reads a trace context from a message's headers (see ``MessageHeadersInjector``).
public struct MessageHeadersExtractor: Extractor {
    public init() {}

    public func extract(key: String, from carrier: MessageHeaders) -> String? {
        carrier[key.lowercased()]
    }
}

/// How a Leader or a Collaborator traces: a client span around each request it makes, whose
/// context travels in the request's headers; a server span around each handler, continuing
/// the trace the message carries.
struct MessageTracing: Sendable {
    /// `nil`: the tracer of `InstrumentationSystem` at the moment of use.
    let configured: (any Tracer)?

    var tracer: any Tracer { self.configured ?? InstrumentationSystem.tracer }

    /// `headers` with the current trace context added, when there is one and `session` carries
    /// headers (without the `headers` extension a message goes without them).
    func headers(_ headers: MessageHeaders, on session: Session) -> MessageHeaders {
        guard session.extensions.contains(.headers), let context = ServiceContext.current else { return headers }
        var headers = headers
        self.tracer.inject(context, into: &headers, using: MessageHeadersInjector())
        return headers
    }

    /// Runs `operation` (a request to `peer`) in a client span named after the topic; whatever
    /// ends it without an answer is thrown as the `RequestError` it stands for.
    func request(
        topic: String,
        peer: String?,
        _ operation: () async throws -> Message
    ) async throws -> Message {
        try await Self.clientSpan(self.tracer, topic: topic, peer: peer, operation)
    }

    private static func clientSpan(
        _ tracer: some Tracer,
        topic: String,
        peer: String?,
        _ operation: () async throws -> Message
    ) async throws -> Message {
        try await tracer.withSpan(topic, ofKind: .client) { span in
            span.attributes["rpc.system"] = "smsg"
            span.attributes["rpc.method"] = topic
            if let peer {
                span.attributes["smsg.peer.node_id"] = peer
            }
            do {
                return try await operation()
            } catch {
                let outcome = RequestError(endingRequest: error)
                span.attributes["smsg.status_code"] = Int(outcome.code.rawValue)
                throw outcome
            }
        }
    }

    /// The context a received message continues: the trace its headers carry, if any.
    func context(of message: Message) -> ServiceContext {
        var context = ServiceContext.topLevel
        if !message.headers.isEmpty {
            self.tracer.extract(message.headers, into: &context, using: MessageHeadersExtractor())
        }
        return context
    }

    /// Runs `operation` (a handler) in a span that continues `message`'s trace.
    func handle<T>(
        _ message: Message,
        nodeID: String,
        _ operation: (any Span) async -> T
    ) async -> T {
        await Self.serverSpan(
            self.tracer,
            message: message,
            context: self.context(of: message),
            nodeID: nodeID,
            operation
        )
    }

    private static func serverSpan<T>(
        _ tracer: some Tracer,
        message: Message,
        context: ServiceContext,
        nodeID: String,
        _ operation: (any Span) async -> T
    ) async -> T {
        await tracer.withSpan(message.topic, context: context, ofKind: message.isRequest ? .server : .consumer) {
            span in
            span.attributes["rpc.system"] = "smsg"
            span.attributes["rpc.method"] = message.topic
            span.attributes["smsg.peer.node_id"] = nodeID
            return await operation(span)
        }
    }
}
