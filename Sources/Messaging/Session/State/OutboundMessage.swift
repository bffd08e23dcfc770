import NIOCore

/// A message for the peer, as the application handed it over.
struct OutboundMessage {
    enum Kind {
        /// An ordinary send: waits (parked) while sending is blocked when `mayWait`, else is
        /// refused.
        case send(mayWait: Bool)
        /// A broadcast's send: parked within the session's bound while sending is blocked; a
        /// session that would need more is a slow consumer.
        case offer
        /// A REQUEST: its RESPONSE completes `response`; it is abandoned at `deadline` (parked
        /// or written), or when its caller gives up.
        case request(deadline: NIODeadline, response: EventLoopPromise<Message>)
    }

    var topic: String
    var body: ByteBuffer
    var flags: DataFlags
    var kind: Kind
    /// The application's headers (sent only where the `headers` extension is in force).
    var headers = MessageHeaders()
    /// Completed once the frame is written (not for requests: their promise is `response`).
    var written: EventLoopPromise<Void>?
    /// Told the DATA id the message was given, once it has one.
    var onID: (@Sendable (UInt64) -> Void)?

    /// The DATA payload bytes (topic length, topic, body; headers are counted when encoded).
    var payloadBytes: Int { 1 + self.topic.utf8.count + self.body.readableBytes }

    /// What identifies the caller waiting for this message, if one waits: the future it waits on.
    var waiter: ObjectIdentifier? {
        if case .request(_, let response) = self.kind {
            return ObjectIdentifier(response.futureResult)
        }
        return self.written.map { ObjectIdentifier($0.futureResult) }
    }

    /// Fails whatever waits for this message.
    func fail(_ error: any Error) {
        self.written?.fail(error)
        if case .request(_, let response) = self.kind {
            response.fail(error)
        }
    }
}
