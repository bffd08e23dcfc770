public import CoreMetrics
public import Logging
public import Messaging
import NIOConcurrencyHelpers
public import NIOCore
import SecureTransport
public import Tracing

/// What a handler knows of the message it handles: who sent it, on which session, its
/// headers, its deadline, and a logger that says all of that.
public struct HandlerContext: Sendable {
    /// The session the message came on (to send more, or to look at the peer's HELLO).
    public let session: Session
    /// The peer's node_id.
    public let nodeID: String
    /// The identity of the peer's TLS client certificate, when it presented one.
    public let certificateIdentity: String?
    /// The message's headers (without the protocol's own `smsg-` ones).
    public let headers: MessageHeaders
    /// For a REQUEST whose requester said how long it waits: when it stops waiting. The
    /// handler's task is cancelled then, and the requester told DEADLINE_EXCEEDED.
    public let deadline: ContinuousClock.Instant?
    /// A logger whose metadata names the node, the session, the topic and the request.
    public let logger: Logger
    /// The trace context the handler runs in: that of its span, which continues the trace
    /// the message carried (also `ServiceContext.current` inside the handler).
    public let serviceContext: ServiceContext
}

/// A request's answer: a body, and headers (sent where the peer has the `headers` extension,
/// left out elsewhere).
public struct Response: Sendable {
    public var headers: MessageHeaders
    public var body: ByteBuffer

    public init(headers: MessageHeaders = MessageHeaders(), body: ByteBuffer) {
        self.headers = headers
        self.body = body
    }
}

/// Handlers by topic, and the rules by which a session's messages reach them: the one router
/// of ``Leader`` and ``Collaborator``.
///
/// - DATA handlers run one at a time, in the order the messages came, per session.
/// - REQUEST handlers run concurrently, up to ``maximumConcurrentRequests`` per session. At
///   that limit the router takes nothing more from the session until a handler ends: the
///   session's inbound queue fills and its watermarks tell the requester FLOW SLOW_DOWN, so
///   the requester waits (capacity is backpressure, not a failure). DATA behind the waiting
///   REQUEST waits with it, in order. A REQUEST whose deadline passed while it waited is not
///   run (answered DEADLINE_EXCEEDED, unless its requester CANCELled it); nor is one CANCELled,
///   or whose connection ended, while it waited. So a handler that waits for something the
///   same peer must send it — a request back to that peer whose answer needs a slot there, or
///   DATA behind the waiting requests — waits until a slot frees or its deadline passes.
/// - A REQUEST on a topic with no handler is answered NO_HANDLER. DATA on a topic with no
///   handler is dropped, counted (`smsg_unhandled_total`) and logged at notice (at most once
///   per ten seconds). An ACK says the message was *taken* (by this router), not handled: a
///   sender that needs to know it was handled makes a request.
/// - A handler that throws `RequestError`, or an error that is `RequestErrorConvertible`,
///   answers with its code, message and metadata; one that throws anything else answers FAILED
///   with a generic message, and the error is logged (with the node, topic and request id) and
///   counted. So does one that lets through the `RequestError` of a request it made itself:
///   that is not this responder's answer (to pass one on, throw a new `RequestError`). A DATA
///   handler's error is logged and counted. Neither closes nor stalls the session: only
///   protocol violations do.
/// - A handler runs with its context's logger as the task-local `Logger.current`.
/// - A REQUEST's handler is cancelled when the requester CANCELs it, when the connection
///   ends, or at its deadline (answered DEADLINE_EXCEEDED).
/// - Every handler runs in a span (kind server for a REQUEST, consumer for other DATA) that
///   continues the trace the message's headers carry (`traceparent`, `tracestate`, or whatever
///   the tracer propagates); a REQUEST answered with a failure marks its span as an error.
public final class Router: Sendable {
    public typealias MessageHandler = @Sendable (Message, HandlerContext) async throws -> Void
    public typealias RequestHandler = @Sendable (Message, HandlerContext) async throws -> Response

    /// The most REQUESTs one session may have in its handlers at once; at the limit the
    /// session's further messages wait (see ``Router``).
    public let maximumConcurrentRequests: Int
    private let handlers = NIOLockedValueBox(Handlers())
    private let logger: Logger
    private let requestFailures: Counter
    private let messageFailures: Counter
    private let tracing: MessageTracing
    /// Requests served and made, by topic and outcome, with their latency.
    public let requestMetrics: RequestMetrics
    /// DATA on a topic without a handler: counted, and logged at most once per
    /// ``unhandledNoticeInterval``.
    private let unhandledCounter: Counter
    private let unhandledNotices = NIOLockedValueBox<(last: ContinuousClock.Instant?, since: Int)>((nil, 0))
    /// The least time between two notices of DATA nobody handles.
    static let unhandledNoticeInterval = Duration.seconds(10)

    /// - Parameters:
    ///   - maximumConcurrentRequests: the most REQUESTs of one session in handlers at once.
    ///   - logger: where handler failures are logged; by default the task-local
    ///     `Logger.current`.
    ///   - metrics: where handler failures are counted (`smsg_handler_failures_total`, by
    ///     `kind`: request or message), and requests (``RequestMetrics``).
    ///   - requestTopics: which topics get a label of their own in the request metrics.
    ///   - tracer: the tracer of the handlers' spans; `nil`, that of `InstrumentationSystem`.
    public init(
        maximumConcurrentRequests: Int = 64,
        logger: Logger = Logger.current,
        metrics: any MetricsFactory = MetricsSystem.factory,
        requestTopics: RequestMetrics.Topics = .handled,
        tracer: (any Tracer)? = nil
    ) {
        precondition(maximumConcurrentRequests > 0, "maximumConcurrentRequests must be positive")
        self.maximumConcurrentRequests = maximumConcurrentRequests
        self.logger = logger
        self.tracing = MessageTracing(configured: tracer)
        self.requestMetrics = RequestMetrics(factory: metrics, topics: requestTopics)
        self.unhandledCounter = Counter(label: "smsg_unhandled_total", factory: metrics)
        self.requestFailures = Counter(
            label: "smsg_handler_failures_total",
            dimensions: [("kind", "request")],
            factory: metrics
        )
        self.messageFailures = Counter(
            label: "smsg_handler_failures_total",
            dimensions: [("kind", "message")],
            factory: metrics
        )
    }

    /// Runs `handler` for every DATA (not REQUEST) on `topic`: an exact topic, or a pattern
    /// `P.>` (every topic under `P.`) or `>` (every topic). A message goes to the handler of
    /// its exact topic, else to that of the longest pattern that matches it.
    public func on(topic: String, _ handler: @escaping MessageHandler) {
        self.changeHandlers { $0.messages[topic] = handler }
    }

    /// Answers every REQUEST on `topic` (an exact topic or a pattern, as ``on(topic:_:)``) with
    /// what `handler` returns.
    public func onRequest(topic: String, _ handler: @escaping RequestHandler) {
        self.changeHandlers { $0.requests[topic] = handler }
    }

    /// Removes the handlers (REQUEST and other DATA) registered for `topic`, exactly as it was
    /// given; a collaborator tells its leader its new interest.
    public func removeHandlers(topic: String) {
        self.changeHandlers {
            $0.messages[topic] = nil
            $0.requests[topic] = nil
        }
    }

    /// The topics and patterns this router handles, as a collaborator announces them (its
    /// capacity is ``maximumConcurrentRequests``).
    public var interest: TopicInterest {
        self.handlers.withLockedValue { handlers in
            TopicInterest.announcing(
                requests: Array(handlers.requests.keys),
                messages: Array(handlers.messages.keys),
                capacity: self.maximumConcurrentRequests
            )
        }
    }

    /// Calls `observer` (outside the router's lock) after every change of handlers.
    package func observeHandlerChanges(_ observer: @escaping @Sendable () -> Void) {
        self.handlers.withLockedValue { $0.observers.append(observer) }
    }

    private func changeHandlers(_ change: (inout Handlers) -> Void) {
        let observers = self.handlers.withLockedValue { handlers in
            change(&handlers)
            return handlers.observers
        }
        for observer in observers {
            observer()
        }
    }

    /// The handlers by topic or pattern.
    private struct Handlers {
        var messages: [String: MessageHandler] = [:]
        var requests: [String: RequestHandler] = [:]
        var observers: [@Sendable () -> Void] = []

        func message(for topic: String) -> MessageHandler? {
            self.messages[topic] ?? Self.longestMatch(in: self.messages, topic: topic)
        }

        func request(for topic: String) -> RequestHandler? {
            self.requests[topic] ?? Self.longestMatch(in: self.requests, topic: topic)
        }

        func handles(_ topic: String) -> Bool {
            self.message(for: topic) != nil || self.request(for: topic) != nil
        }

        private static func longestMatch<Handler>(in handlers: [String: Handler], topic: String) -> Handler? {
            var best: (length: Int, handler: Handler)?
            for (pattern, handler) in handlers where TopicInterest.isWildcard(pattern) {
                let length = pattern.utf8.count
                if length > best?.length ?? -1, TopicInterest.pattern(pattern, matches: topic) {
                    best = (length, handler)
                }
            }
            return best?.handler
        }
    }

    /// Answers every REQUEST on `topic` with the body `handler` returns.
    public func onRequest(
        topic: String,
        _ handler: @escaping @Sendable (Message, HandlerContext) async throws -> ByteBuffer
    ) {
        self.onRequest(topic: topic) { message, context -> Response in
            Response(body: try await handler(message, context))
        }
    }

    // MARK: - Serving

    /// Hands the messages of `messages` (each with its session) to the handlers until the
    /// sequence ends; waits for the requests still in handlers (cancelled if their connection
    /// ended). Returns the error that ended the sequence, if any.
    ///
    /// Capacity is backpressure: while a session has ``maximumConcurrentRequests`` REQUESTs in
    /// handlers, nothing more is taken from it until one ends. Its messages wait in the
    /// session's inbound queue, whose watermarks tell the requester FLOW SLOW_DOWN, so the
    /// requester's sends wait instead of failing. A REQUEST whose deadline passed while it
    /// waited is answered DEADLINE_EXCEEDED without running its handler.
    func serve<Messages: AsyncSequence>(
        _ messages: Messages
    ) async -> (any Error)? where Messages.Element == SessionMessage {
        let slots = RequestSlots(limit: self.maximumConcurrentRequests)
        return await withDiscardingTaskGroup { group in
            do {
                for try await received in messages {
                    let message = received.message
                    let session = received.session
                    if message.isResponse { continue }
                    guard message.isRequest else {
                        await self.handleMessage(message, on: session)
                        continue
                    }
                    let key = ObjectIdentifier(session)
                    guard await slots.acquire(key) else {
                        // Cancelled while waiting: the router is shutting down.
                        let refusal = RequestError(.unavailable, "the responder is shutting down")
                        let sent = await self.answer(message, on: session, with: .failure(refusal))
                        self.served(message, outcome: sent, since: nil)
                        return nil
                    }
                    group.addTask {
                        await self.handleRequest(message, on: session)
                        slots.release(key)
                    }
                }
                return nil
            } catch {
                return error
            }
        }
    }

    /// The context of `message` on `session`.
    private func context(of message: Message, on session: Session, deadline: ContinuousClock.Instant?) -> HandlerContext
    {
        let nodeID = session.peer?.nodeID ?? ""
        var logger = self.logger
        logger[metadataKey: "node_id"] = "\(nodeID)"
        if let sessionID = session.sessionID {
            logger[metadataKey: "session_id"] = "\(sessionID)"
        }
        logger[metadataKey: "topic"] = "\(message.topic)"
        if message.isRequest {
            logger[metadataKey: "request_id"] = "\(message.id)"
        }
        return HandlerContext(
            session: session,
            nodeID: nodeID,
            certificateIdentity: session.peerIdentity,
            headers: message.headers,
            deadline: deadline,
            logger: logger,
            serviceContext: ServiceContext.current ?? .topLevel
        )
    }

    private func handleMessage(_ message: Message, on session: Session) async {
        guard let handler = self.handlers.withLockedValue({ $0.message(for: message.topic) }) else {
            self.unhandled(message, on: session)
            return
        }
        await self.tracing.handle(message, nodeID: session.peer?.nodeID ?? "") { span in
            let context = self.context(of: message, on: session, deadline: nil)
            do {
                try await withLogger(context.logger) { _ in try await handler(message, context) }
            } catch {
                self.messageFailures.increment()
                span.recordError(error)
                span.setStatus(SpanStatus(code: .error))
                context.logger.warning("message handler failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// How a request's handler ended.
    private enum Outcome: Sendable {
        case answered(Result<Response, RequestError>)
        /// The requester stopped waiting (CANCEL, or the connection ended): no answer.
        case abandoned
        case deadlineExceeded
    }

    private func handleRequest(_ message: Message, on session: Session) async {
        guard let handler = self.handlers.withLockedValue({ $0.request(for: message.topic) }) else {
            let sent = await self.answer(
                message,
                on: session,
                with: .failure(RequestError(.noHandler, "no handler for this topic"))
            )
            self.served(message, outcome: sent, since: nil)
            return
        }
        await self.tracing.handle(message, nodeID: session.peer?.nodeID ?? "") { span in
            await self.handleRequest(message, on: session, with: handler, in: span)
        }
    }

    private func handleRequest(
        _ message: Message,
        on session: Session,
        with handler: @escaping RequestHandler,
        in span: any Span
    ) async {
        let started = ContinuousClock.now
        if session.isAbandoned(message) {
            // CANCELled, or its connection ended, while it waited for a slot: nobody waits.
            span.attributes["smsg.status_code"] = Int(RequestError.Code.cancelled.rawValue)
            self.served(message, outcome: .cancelled, since: started)
            return
        }
        let deadline = message.responderDeadline
        if let deadline, deadline <= started {
            // It waited for a slot past its deadline: the requester has stopped waiting.
            span.attributes["smsg.status_code"] = Int(RequestError.Code.deadlineExceeded.rawValue)
            let failure = RequestError(.deadlineExceeded, "the request's deadline passed before it was served")
            let sent = await self.answer(message, on: session, with: .failure(failure))
            self.served(message, outcome: sent, since: started)
            return
        }
        let context = self.context(of: message, on: session, deadline: deadline)
        // The handler races the requester's giving up and the deadline. The first to end wins:
        // the answer goes at once, and the others are cancelled (a handler that ignores its
        // cancellation delays nothing but its own end).
        await withTaskGroup(of: Outcome?.self) { race in
            race.addTask {
                do {
                    return .answered(
                        .success(try await withLogger(context.logger) { _ in try await handler(message, context) })
                    )
                } catch let error as RequestError where error.origin == .made {
                    return .answered(.failure(error))
                } catch let error as RequestError {
                    // The outcome of a request the handler made: not this responder's answer.
                    return self.handlerFailed(error, context: context)
                } catch let error as any RequestErrorConvertible {
                    return .answered(.failure(RequestError(error)))
                } catch {
                    return self.handlerFailed(error, context: context)
                }
            }
            race.addTask {
                await session.waitForCancellation(of: message) ? .abandoned : nil
            }
            if let deadline {
                race.addTask {
                    do {
                        try await Task.sleep(until: deadline, clock: .continuous)
                        return .deadlineExceeded
                    } catch {
                        return nil
                    }
                }
            }
            // When every racer ends without an outcome, the router itself is being cancelled
            // (shutting down) while the requester still waits: it is told so.
            var outcome = Outcome.answered(.failure(RequestError(.unavailable, "the responder is shutting down")))
            while let next = await race.next() {
                if let next {
                    outcome = next
                    break
                }
            }
            race.cancelAll()
            let result: Result<Response, RequestError>
            switch outcome {
            case .answered(let answer):
                result = answer
            case .deadlineExceeded:
                result = .failure(RequestError(.deadlineExceeded, "the request's deadline passed"))
            case .abandoned:
                context.logger.debug("request abandoned by the requester")
                span.attributes["smsg.status_code"] = Int(RequestError.Code.cancelled.rawValue)
                self.served(message, outcome: .cancelled, since: started)
                return
            }
            if case .failure(let failure) = result {
                span.attributes["smsg.status_code"] = Int(failure.code.rawValue)
                span.setStatus(SpanStatus(code: .error, message: failure.code.description))
            }
            let sent = await self.answer(message, on: session, with: result)
            self.served(message, outcome: sent, since: started)
        }
    }

    // MARK: - Metrics

    /// DATA on a topic nobody handles: dropped (its ACK, if asked for, went when the router
    /// took it), counted in `smsg_unhandled_total`, and told at notice, at most once per
    /// ``unhandledNoticeInterval`` with how many more were dropped meanwhile.
    private func unhandled(_ message: Message, on session: Session) {
        self.unhandledCounter.increment()
        let now = ContinuousClock.now
        let dropped: Int? = self.unhandledNotices.withLockedValue { notices in
            if let last = notices.last, now - last < Self.unhandledNoticeInterval {
                notices.since += 1
                return nil
            }
            defer { notices = (now, 0) }
            return notices.since
        }
        guard let dropped else { return }
        var metadata: Logger.Metadata = [
            "topic": "\(message.topic)", "node_id": "\(session.peer?.nodeID ?? "")",
        ]
        if dropped > 0 {
            metadata["dropped_since_last_notice"] = "\(dropped)"
        }
        self.logger.notice("dropped a message: no handler for its topic", metadata: metadata)
    }

    /// Whether a handler serves `topic` (a REQUEST or DATA handler).
    private func handles(_ topic: String) -> Bool {
        self.handlers.withLockedValue { $0.handles(topic) }
    }

    /// Counts a REQUEST served with `outcome` (`nil`: answered), timed from `since`.
    private func served(_ request: Message, outcome: RequestError.Code?, since: ContinuousClock.Instant?) {
        let topic = self.requestMetrics.label(of: request.topic, isHandled: self.handles)
        self.requestMetrics.record(
            side: "served",
            topic: topic,
            code: outcome,
            duration: since.map { ContinuousClock.now - $0 }
        )
    }

    /// Runs a request this node makes on `topic` (its coding included, for a typed one),
    /// counting and timing its outcome; whatever ends it without an answer is thrown as the
    /// `RequestError` it stands for.
    func made<Answer>(topic: String, _ request: () async throws -> Answer) async throws -> Answer {
        let started = ContinuousClock.now
        let label = self.requestMetrics.madeLabel(of: topic)
        do {
            let answer = try await request()
            self.requestMetrics.record(side: "made", topic: label, code: nil, duration: ContinuousClock.now - started)
            return answer
        } catch {
            let outcome = RequestError(endingRequest: error)
            self.requestMetrics.record(
                side: "made",
                topic: label,
                code: outcome.code,
                duration: ContinuousClock.now - started
            )
            throw outcome
        }
    }

    /// Whether an answer that could not be sent was awaited by nobody: the connection ended
    /// (closed, or by an ERROR either way) or is closing, or the requester CANCELled.
    private static func nobodyWaits(_ error: MessagingError) -> Bool {
        switch error.code {
        case .connectionClosed, .noSuchRequest, .peerError, .protocolViolation, .closing: true
        default: false
        }
    }

    /// A handler threw what is not an outcome of its own: logged, counted, answered FAILED with
    /// a generic message (nothing of the error crosses the wire); `nil` when the race cancelled
    /// the handler (whichever ended it says what happened).
    private func handlerFailed(_ error: any Error, context: HandlerContext) -> Outcome? {
        if Task.isCancelled {
            return nil
        }
        self.requestFailures.increment()
        context.logger.warning("request handler failed", metadata: ["error": "\(error)"])
        return .answered(.failure(RequestError(.failed, "the handler failed")))
    }

    /// Sends `result` as the answer to `request`; returns the outcome that went (`nil`: the
    /// answer), which is FAILED when the handler's could not go.
    @discardableResult
    private func answer(
        _ request: Message,
        on session: Session,
        with result: Result<Response, RequestError>
    ) async -> RequestError.Code? {
        do {
            switch result {
            case .success(let response):
                let headers = session.extensions.contains(.headers) ? response.headers : MessageHeaders()
                try await session.respond(to: request, headers: headers, body: response.body)
                return nil
            case .failure(var failure):
                if (try? failure.metadata.validateForSending()) == nil {
                    // Headers that cannot go (a reserved or invalid name, too many bytes) must
                    // not cost the requester the code and message the handler chose.
                    self.logger.warning(
                        "a request outcome's metadata cannot be sent; sending the outcome without it",
                        metadata: ["topic": "\(request.topic)", "request_id": "\(request.id)"]
                    )
                    failure.metadata = MessageHeaders()
                }
                try await session.respond(to: request, failure: failure)
                return failure.code
            }
        } catch let error as MessagingError where Self.nobodyWaits(error) {
            // The connection ended, or the requester CANCELled meanwhile: nobody waits for it.
            self.logger.debug(
                "a request's answer could not be sent",
                metadata: ["topic": "\(request.topic)", "request_id": "\(request.id)", "error": "\(error)"]
            )
            if case .failure(let failure) = result {
                return failure.code
            }
            return nil
        } catch {
            // The handler's answer cannot go (too large for the peer, bad headers): the requester
            // is told it failed rather than left to wait.
            self.requestFailures.increment()
            self.logger.warning(
                "a request's answer could not be sent; answering FAILED",
                metadata: ["topic": "\(request.topic)", "request_id": "\(request.id)", "error": "\(error)"]
            )
            try? await session.respond(to: request, failure: RequestError(.failed, "the answer could not be sent"))
            return .failed
        }
    }
}
