import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import Messaging

/// Timing behaviour of a session, on its handler over an `EmbeddedChannel` whose clock moves
/// only when the test says so: no wall-clock sleeps.
@Suite("Session timing (explicit time)")
struct SessionTimingTests {
    static func configuration(_ change: (inout SessionConfiguration) -> Void = { _ in }) -> SessionConfiguration {
        var configuration = SessionConfiguration()
        change(&configuration)
        return configuration
    }

    /// An open server session limited to 10 messages a second, with a receiver that counts.
    static func rateLimited(gracePeriod: Duration) throws -> (EmbeddedSession, CountingReceiver) {
        let receiver = CountingReceiver()
        let side = try EmbeddedSession(
            configuration: Self.configuration {
                $0.flowControl.rateLimit = RateLimit(messagesPerSecond: 10, gracePeriod: gracePeriod)
            },
            receiver: receiver
        )
        try side.open()
        return (side, receiver)
    }

    @Test("a quiet session PINGs once per interval, and a silent peer is timed out at 3 × the interval")
    func heartbeatAndTimeout() throws {
        let side = try EmbeddedSession(configuration: Self.configuration { $0.heartbeatInterval = .seconds(1) })
        try side.open(peerHeartbeatMilliseconds: 1000)
        side.advance(.milliseconds(999))
        #expect(try side.written().isEmpty)
        side.advance(.milliseconds(1))
        #expect(try side.written().map(\.type) == [.ping])
        side.advance(.seconds(1))
        #expect(try side.written().map(\.type) == [.ping])
        // Traffic from the peer (a PONG) at 2.5 s moves the timeout to 5.5 s.
        side.advance(.milliseconds(500))
        try side.receive(Frame(type: .pong, id: 1))
        side.advance(.milliseconds(500))
        #expect(try side.written().map(\.type) == [.ping])
        side.advance(.milliseconds(2_499))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == nil)
        side.advance(.milliseconds(1))
        let frames = try side.written()
        #expect(EmbeddedSession.errorCode(in: frames) == .timeout)
        side.advance(.seconds(1))
        #expect(side.isClosed)
        #expect(side.session.closeReason?.errorCode == .timeout)
        #expect(side.session.lastRoundTrip == .milliseconds(1_500))
    }

    @Test("the timeout uses the larger interval: the peer's 2 s over our 1 s")
    func timeoutUsesPeerInterval() throws {
        let side = try EmbeddedSession(configuration: Self.configuration { $0.heartbeatInterval = .seconds(1) })
        try side.open(peerHeartbeatMilliseconds: 2000)
        side.advance(.milliseconds(5_999))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == nil)
        side.advance(.milliseconds(1))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == .timeout)
    }

    @Test("a side whose peer PINGs twice as often still PINGs on its own schedule")
    func pongIsNotOwnHeartbeat() throws {
        let side = try EmbeddedSession(configuration: Self.configuration { $0.heartbeatInterval = .seconds(1) })
        try side.open(peerHeartbeatMilliseconds: 500)
        side.advance(.milliseconds(500))
        try side.receive(Frame(type: .ping, id: 1))
        #expect(try side.written().map(\.type) == [.pong])
        side.advance(.milliseconds(500))
        try side.receive(Frame(type: .ping, id: 2))
        #expect(try side.written().map(\.type).sorted(by: { $0.rawValue < $1.rawValue }) == [.ping, .pong])
    }

    @Test("no HELLO within the hello timeout: ERROR TIMEOUT, then the ERROR linger, then close")
    func helloTimeoutAndLinger() throws {
        let side = try EmbeddedSession(configuration: Self.configuration { $0.helloTimeout = .seconds(5) })
        side.advance(.milliseconds(4_999))
        #expect(try side.written().isEmpty)
        side.advance(.milliseconds(1))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == .timeout)
        #expect(side.halfClose.outputClosed)
        // The sender of an ERROR reads and discards for 1 s before it closes.
        try side.receive(bytes: ByteBuffer(string: "ignored garbage, no second ERROR"))
        #expect(try side.written().isEmpty)
        side.advance(.milliseconds(999))
        #expect(!side.isClosed)
        side.advance(.milliseconds(1))
        #expect(side.isClosed)
    }

    @Test("our GOODBYE: the session closes at the drain timeout when the peer never answers")
    func drainTimeout() throws {
        let side = try EmbeddedSession(configuration: Self.configuration { $0.drainTimeout = .seconds(2) })
        try side.open()
        side.session.beginClose()
        #expect(try side.written().map(\.type) == [.goodbye])
        #expect(side.session.currentState == .draining)
        side.advance(.milliseconds(1_999))
        #expect(!side.isClosed)
        side.advance(.milliseconds(1))
        #expect(side.isClosed)
        #expect(side.session.closeReason == nil, "our own close is a clean end")
    }

    @Test("a server going away: GOODBYE, then ERROR GOING_AWAY at the drain timeout")
    func goingAway() throws {
        let side = try EmbeddedSession(configuration: Self.configuration { $0.drainTimeout = .seconds(2) })
        try side.open()
        side.session.beginClose(goingAway: true)
        #expect(try side.written().map(\.type) == [.goodbye])
        side.advance(.seconds(2))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == .goingAway)
        side.advance(.seconds(1))
        #expect(side.isClosed)
    }

    @Test("the peer's GOODBYE waits for the RESPONSE we owe, at most until the drain timeout")
    func goodbyeWaitsForOwedResponse() throws {
        let side = try EmbeddedSession(configuration: Self.configuration { $0.drainTimeout = .seconds(2) })
        try side.open()
        let request = side.data(topic: "q", flags: .request)
        try side.receive(request, Frame(type: .goodbye))
        #expect(try side.written().isEmpty)
        side.handler.sendResponse(to: request.id, topic: "q", body: ByteBuffer(string: "a"), promise: nil)
        side.channel.embeddedEventLoop.run()
        #expect(try side.written().map(\.type) == [.data, .goodbye])
        #expect(side.isClosed)

        let late = try EmbeddedSession(configuration: Self.configuration { $0.drainTimeout = .seconds(2) })
        try late.open()
        try late.receive(late.data(topic: "q", flags: .request), Frame(type: .goodbye))
        late.advance(.milliseconds(1_999))
        #expect(try late.written().isEmpty)
        late.advance(.milliseconds(1))
        #expect(try late.written().map(\.type) == [.goodbye])
        #expect(late.isClosed)
    }

    @Test("the rate limit: a burst in one read is delivered at the rate as time passes, in order")
    func rateLimitSpreadsABurst() throws {
        let (side, receiver) = try Self.rateLimited(gracePeriod: .seconds(30))
        try side.receive(frames: (1...30).map { side.data(body: "\($0)") })
        // A full bucket of 10, and the one that took it below zero.
        #expect(receiver.messages.count == 11)
        side.advance(.milliseconds(500))
        #expect(receiver.messages.count == 16)
        side.advance(.milliseconds(500))
        #expect(receiver.messages.count == 21)
        side.advance(.seconds(1))
        #expect(receiver.messages.count == 30)
        #expect(receiver.messages.map { String(buffer: $0.body) } == (1...30).map { "\($0)" })
        #expect(!side.isClosed)
    }

    @Test("a peer over the rate limit for longer than the grace period gets OVERLOADED")
    func rateLimitGrace() throws {
        let (side, receiver) = try Self.rateLimited(gracePeriod: .seconds(1))
        try side.receive(frames: (1...100).map { _ in side.data() })
        side.advance(.milliseconds(999))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == nil)
        side.advance(.milliseconds(1))
        #expect(EmbeddedSession.errorCode(in: try side.written()) == .overloaded)
        #expect(receiver.messages.count < 100)
    }

    @Test("sends wait behind SLOW_DOWN, in order, and go out on RESUME")
    func parkedSends() throws {
        let side = try EmbeddedSession()
        try side.open()
        try side.receive(Frame(type: .flow, payload: ByteBuffer(bytes: [FlowSignal.slowDown.rawValue])))
        #expect(side.session.isSendBlocked)
        let loop = side.channel.embeddedEventLoop
        let promises = (0..<3).map { _ in loop.makePromise(of: Void.self) }
        for (index, promise) in promises.enumerated() {
            side.handler.send(
                OutboundMessage(
                    topic: "p",
                    body: ByteBuffer(string: "\(index)"),
                    flags: [],
                    kind: .send(mayWait: true),
                    written: promise
                )
            )
        }
        #expect(!side.session.trySend(topic: "p", body: ByteBuffer()))
        loop.run()
        #expect(try side.written().isEmpty)
        try side.receive(Frame(type: .flow, payload: ByteBuffer(bytes: [FlowSignal.resume.rawValue])))
        loop.run()
        let frames = try side.written()
        #expect(frames.map { Message(dataFrame: $0).body } == (0..<3).map { ByteBuffer(string: "\($0)") })
        #expect(frames.map(\.id) == [1, 2, 3])
        #expect(!side.session.isSendBlocked)
        for promise in promises {
            #expect(throws: Never.self) { try promise.futureResult.wait() }
        }
    }

    @Test("the receive queue: SLOW_DOWN at the high watermark, OVERLOADED at the hard limit")
    func inboundWatermarks() throws {
        let side = try EmbeddedSession(
            configuration: Self.configuration {
                $0.flowControl.highWatermarkMessages = 3
                $0.flowControl.lowWatermarkMessages = 1
                $0.flowControl.hardLimitMessages = 5
            }
        )
        try side.open()
        try side.receive(side.data(), side.data())
        #expect(try side.written().isEmpty)
        try side.receive(side.data())
        let slowDown = try side.written()
        #expect(slowDown.map(\.type) == [.flow])
        #expect(slowDown.first?.payload.getInteger(at: 0, as: UInt8.self) == FlowSignal.slowDown.rawValue)
        try side.receive(side.data(), side.data())
        #expect(EmbeddedSession.errorCode(in: try side.written()) == .overloaded)
    }

    @Test("a request times out at its deadline, and its late RESPONSE is ignored")
    func requestTimeout() throws {
        let side = try EmbeddedSession(role: .client)
        #expect(try side.written().map(\.type) == [.hello])
        try side.receive(
            Frame(type: .hello, payload: ByteBuffer(bytes: Hello(nodeID: "s", role: "s", sessionID: "s-9").encoded()))
        )
        let response = side.channel.embeddedEventLoop.makePromise(of: Message.self)
        side.handler.send(
            OutboundMessage(
                topic: "q",
                body: ByteBuffer(),
                flags: .request,
                kind: .request(deadline: side.channel.embeddedEventLoop.now + .seconds(3), response: response)
            )
        )
        side.channel.embeddedEventLoop.run()
        #expect(try side.written().map(\.type) == [.data])
        side.advance(.milliseconds(2_999))
        let outcome = NIOLockedValueBox<Result<Message, any Error>?>(nil)
        response.futureResult.whenComplete { result in outcome.withLockedValue { $0 = result } }
        #expect(outcome.withLockedValue { $0 } == nil)
        side.advance(.milliseconds(1))
        guard case .failure(let error as MessagingError) = outcome.withLockedValue({ $0 }) else {
            Issue.record("expected a timeout, got \(String(describing: outcome))")
            return
        }
        #expect(error.code == .requestTimedOut)
        var late = ByteBuffer(bytes: [1, UInt8(ascii: "q")])
        late.writeString("late")
        try side.receive(Frame(type: .data, flags: DataFlags.response.rawValue, id: 1, payload: late))
        #expect(!side.isClosed)
    }
}
