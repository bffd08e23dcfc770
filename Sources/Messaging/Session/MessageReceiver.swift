public import NIOCore

// MARK: - Receivers

/// Takes a session's messages on its event loop, as they arrive, instead of through
/// ``Session/messages``: the fast path for code that answers at once (an echo, a router),
/// with no hop between threads and no queue.
///
/// A receiver runs on the event loop and must not block it. It is created for one session
/// and dropped when the connection closes. While the connection cannot take more output, the
/// session stops reading from the peer, so a peer that does not read what it is sent is not
/// read either.
public protocol MessageReceiver: AnyObject {
    /// The HELLO exchange is done; `session` may send from now on.
    func sessionOpened(_ session: LoopSession)
    /// A message arrived (in order). An ACK the sender asked for is sent when this returns.
    func received(_ message: Message, session: LoopSession)
}

extension MessageReceiver {
    public func sessionOpened(_ session: LoopSession) {}
}

/// A session as seen from its event loop, by a ``MessageReceiver``: sends that take effect
/// at once, written out together at the end of the event-loop tick.
///
/// Use it only on the session's event loop. After the connection closes its sends do nothing.
public struct LoopSession {
    let handler: SessionHandler

    /// The thread-safe handle of the same session.
    public var session: Session { self.handler.sessionHandle }

    /// Whether the peer cannot take more now (the connection is over its write-buffer
    /// watermark or the peer said SLOW_DOWN).
    public var isSendBlocked: Bool { self.handler.isSendBlockedNow }

    /// Sends DATA without waiting. While sending is blocked the message is held, in order,
    /// within the session's bound (its write-buffer high watermark); a session that would need
    /// more is closed as a slow consumer with ERROR OVERLOADED. Returns false when the session
    /// is not open or the message can never be sent (topic over 255 bytes, payload over the
    /// peer's max_frame).
    @discardableResult
    public func send(topic: String, body: ByteBuffer) -> Bool {
        self.handler.offerNow(topic: topic, body: body)
    }

    /// The extensions in force on the session.
    public var extensions: ProtocolExtensions { self.handler.machine.extensions }

    /// Answers a REQUEST; the topic defaults to the request's, and `headers` go where the peer
    /// has the `headers` extension. Returns false when the session is closed or the answer
    /// cannot be sent (headers that are invalid or that the peer cannot take included).
    @discardableResult
    public func respond(
        to request: Message,
        topic: String? = nil,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer
    ) -> Bool {
        if !headers.isEmpty {
            do { try headers.validateForSending() } catch { return false }
        }
        return self.handler.respondNow(to: request.id, topic: topic ?? request.topic, headers: headers, body: body)
    }

    /// Answers a REQUEST with the outcome that it was not served (FAILED where the peer has the
    /// `status` extension, else an empty body). Returns false when the session is closed.
    @discardableResult
    public func respond(to request: Message, failure: RequestError) -> Bool {
        self.handler.respondNow(to: request.id, topic: request.topic, body: ByteBuffer(), failure: failure)
    }
}
