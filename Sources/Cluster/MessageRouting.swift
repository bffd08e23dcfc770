public import Messaging
public import NIOCore

/// What registers handlers by topic: ``Leader`` and ``Collaborator``, through their one
/// ``Router``. See ``Router`` for how failures, ordering, concurrency and deadlines are
/// handled.
public protocol MessageRouting: Sendable {
    /// The handlers by topic.
    var router: Router { get }
    /// The coder of typed messages.
    var coder: MessageCoder { get }
}

extension MessageRouting {
    /// Runs `handler` for every DATA (not REQUEST) on `topic`.
    public func on(topic: String, _ handler: @escaping Router.MessageHandler) {
        self.router.on(topic: topic, handler)
    }

    /// Runs `handler` with the value decoded (by ``coder``) from every DATA on `topic`; a body
    /// that does not decode counts as the handler's failure.
    public func on<Value: Decodable & Sendable>(
        topic: String,
        as type: Value.Type,
        _ handler: @escaping @Sendable (Value, HandlerContext) async throws -> Void
    ) {
        self.router.on(topic: topic, as: type, coder: self.coder, handler)
    }

    /// Answers every REQUEST on `topic` with the body `handler` returns; a thrown
    /// `RequestError` answers with its code, anything else thrown with FAILED.
    public func onRequest(
        topic: String,
        _ handler: @escaping @Sendable (Message, HandlerContext) async throws -> ByteBuffer
    ) {
        self.router.onRequest(topic: topic, handler)
    }

    /// Answers every REQUEST on `topic` with the headers and body `handler` returns.
    public func onRequest(topic: String, _ handler: @escaping Router.RequestHandler) {
        self.router.onRequest(topic: topic, handler)
    }

    /// Answers every REQUEST on `topic` with the value `handler` returns for the decoded
    /// request (both through ``coder``); a body that does not decode is answered
    /// INVALID_ARGUMENT.
    public func onRequest<Request: Decodable & Sendable, Response: Encodable & Sendable>(
        topic: String,
        as type: Request.Type,
        _ handler: @escaping @Sendable (Request, HandlerContext) async throws -> Response
    ) {
        self.router.onRequest(topic: topic, as: type, coder: self.coder, handler)
    }
}
