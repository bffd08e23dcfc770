import NIOCore
import Testing

@testable import Messaging

/// The session state machine and its sub-machines with explicit times: no channel, no clock.
@Suite("Session state machine timing")
struct SessionMachineTimingTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func openServer(
        heartbeat: TimeAmount = .seconds(1),
        peerMilliseconds: Int? = 1000,
        change: (inout SessionStateMachine.Configuration) -> Void = { _ in }
    ) -> SessionStateMachine {
        var configuration = SessionStateMachine.Configuration(
            role: .server,
            hello: Hello(nodeID: "server", role: "server", sessionID: "s-1"),
            heartbeatInterval: heartbeat,
            maxFrame: 1 << 20,
            requiredIdentity: nil
        )
        change(&configuration)
        var machine = SessionStateMachine(configuration: configuration, now: Self.start)
        #expect(
            machine.transportReady(peerIdentity: nil, now: Self.start)
                == .waitForHello(send: nil, deadline: Self.start + .seconds(5))
        )
        let hello = Hello(nodeID: "c", role: "c", heartbeatMilliseconds: peerMilliseconds)
        _ = machine.receive(Frame(type: .hello, payload: ByteBuffer(bytes: hello.encoded())), now: Self.start)
        #expect(machine.isOpen)
        return machine
    }

    static func data(id: UInt64, flags: DataFlags = []) -> Frame {
        Frame(type: .data, flags: flags.rawValue, id: id, payload: ByteBuffer(bytes: [1, UInt8(ascii: "t")]))
    }

    @Test("heartbeat timer: PING when we sent nothing for the interval, TIMEOUT after 3 × of silence")
    func heartbeat() {
        var machine = Self.openServer()
        #expect(machine.nextHeartbeat == Self.start + .seconds(1))
        machine.framesSent(now: Self.start + .milliseconds(600))
        // We sent 400 ms ago: no PING yet; look again when the interval since then is up.
        #expect(
            machine.heartbeatTimerFired(now: Self.start + .seconds(1))
                == .wait(next: Self.start + .milliseconds(1_600))
        )
        #expect(
            machine.heartbeatTimerFired(now: Self.start + .milliseconds(1_600))
                == .sendPing(id: 1, next: Self.start + .milliseconds(2_600))
        )
        machine.bytesReceived(now: Self.start + .seconds(2))
        #expect(
            machine.heartbeatTimerFired(now: Self.start + .milliseconds(2_600))
                == .sendPing(id: 2, next: Self.start + .milliseconds(3_600))
        )
        // A PONG 300 ms after PING 2 gives the round trip.
        _ = machine.receive(Frame(type: .pong, id: 2), now: Self.start + .milliseconds(2_900))
        #expect(machine.lastRoundTrip == .milliseconds(300))
        guard case .fail(let violation) = machine.heartbeatTimerFired(now: Self.start + .milliseconds(5_900)) else {
            Issue.record("expected a timeout")
            return
        }
        #expect(violation.code == .timeout)
        #expect(machine.isClosed)
    }

    @Test("the hello timer closes a server without HELLO with TIMEOUT and a client without a word")
    func helloTimeout() {
        var server = SessionStateMachine(
            configuration: .init(
                role: .server,
                hello: Hello(nodeID: "s", role: "s", sessionID: "1"),
                heartbeatInterval: .seconds(5),
                maxFrame: 1 << 20,
                requiredIdentity: nil
            )
        )
        _ = server.transportReady(peerIdentity: nil, now: Self.start)
        guard case .fail(let violation) = server.phaseTimerFired() else {
            Issue.record("expected ERROR TIMEOUT")
            return
        }
        #expect(violation.code == .timeout)
        #expect(server.errorSent(now: Self.start + .seconds(5)) == Self.start + .seconds(6), "1 s linger")
        #expect(server.phaseTimerFired() == .close)
    }

    @Test("GOODBYE: drain deadline, clean close at it; going away fails with GOING_AWAY")
    func goodbye() {
        var machine = Self.openServer { $0.drainTimeout = .seconds(2) }
        #expect(
            machine.closeRequested(goingAway: false, now: Self.start)
                == .sendGoodbye(drainDeadline: Self.start + .seconds(2))
        )
        #expect(machine.phaseTimerFired() == .close)
        #expect(machine.connectionEnded().closeReason == nil)

        var leaving = Self.openServer { $0.drainTimeout = .seconds(2) }
        _ = leaving.closeRequested(goingAway: true, now: Self.start)
        #expect(leaving.phaseTimerFired() == .fail(ProtocolViolation(.goingAway, "server shutting down")))

        var answered = Self.openServer()
        _ = answered.closeRequested(goingAway: false, now: Self.start)
        #expect(answered.receive(Frame(type: .goodbye), now: Self.start) == .goodbyeComplete)
        #expect(answered.phaseTimerFired() == .none)
    }

    @Test("the peer's GOODBYE is answered once no RESPONSE is owed, or at the drain timeout")
    func answerGoodbye() throws {
        var machine = Self.openServer { $0.drainTimeout = .seconds(2) }
        _ = machine.receive(Self.data(id: 1, flags: .request), now: Self.start)
        #expect(machine.receive(Frame(type: .goodbye), now: Self.start) == .goodbyeReceived)
        #expect(machine.answerGoodbye(now: Self.start) == .waitForResponses(deadline: Self.start + .seconds(2)))
        try machine.respond(to: 1, topicBytes: 1, bodyBytes: 0)
        let answered = machine.answerGoodbyeIfReady()
        #expect(answered)
        #expect(machine.isClosed)

        var late = Self.openServer { $0.drainTimeout = .seconds(2) }
        _ = late.receive(Self.data(id: 1, flags: .request), now: Self.start)
        _ = late.receive(Frame(type: .goodbye), now: Self.start)
        _ = late.answerGoodbye(now: Self.start)
        #expect(late.phaseTimerFired() == .sendGoodbyeAndClose)
        #expect(late.connectionEnded().closeReason == nil)
    }

    @Test("rate limit: over the bucket pauses reading until the refill; past the grace it fails")
    func rateLimit() {
        var machine = Self.openServer {
            $0.rateLimit = RateLimit(messagesPerSecond: 2, gracePeriod: .seconds(1))
        }
        for id in 1...3 {
            #expect(machine.receive(Self.data(id: UInt64(id)), now: Self.start) != .none)
        }
        #expect(machine.isThrottled)
        #expect(machine.rateLimitWake(now: Self.start) == Self.start + .milliseconds(500))
        #expect(machine.rateLimitTimerFired(now: Self.start + .milliseconds(500)) == .resumeReading)
        #expect(!machine.isThrottled)
        _ = machine.receive(Self.data(id: 4), now: Self.start + .milliseconds(500))
        _ = machine.receive(Self.data(id: 5), now: Self.start + .milliseconds(500))
        #expect(machine.isThrottled)
        #expect(
            machine.rateLimitTimerFired(now: Self.start + .seconds(1))
                == .fail(ProtocolViolation(.overloaded, "rate limit exceeded"))
        )
    }

    @Test("outbound flow: parked in order behind SLOW_DOWN, broadcast bound, slow-consumer timer")
    func outboundFlow() {
        var machine = Self.openServer { $0.offerLimit = 10 }
        _ = machine.receive(Frame(type: .flow, payload: ByteBuffer(bytes: [1])), now: Self.start)
        // Each offer is 7 payload bytes (topic length, "t", 5 bytes of body).
        let offer = OutboundMessage(topic: "t", body: ByteBuffer(string: "12345"), flags: [], kind: .offer)
        let first = machine.send(offer, now: Self.start)
        let second = machine.send(offer, now: Self.start)
        guard case .parked = first, case .slowConsumer = second else {
            Issue.record("expected the first offer parked, the second a slow consumer past the 10-byte bound")
            return
        }

        var flow = OutboundFlowStateMachine(offerLimit: 100, slowConsumerTimeout: .seconds(30))
        #expect(flow.writabilityChanged(false, now: Self.start) == .armSlowConsumerTimer(Self.start + .seconds(30)))
        #expect(flow.writabilityChanged(false, now: Self.start + .seconds(1)) == .none)
        #expect(flow.writabilityChanged(true, now: Self.start + .seconds(2)) == .cancelSlowConsumerTimer)
        _ = flow.writabilityChanged(false, now: Self.start + .seconds(3))
        let slow = flow.slowConsumerTimerFired()
        #expect(slow)
    }

    @Test("inbound watermarks: SLOW_DOWN once at the high mark, RESUME at the low, OVERLOADED at the hard")
    func inboundWatermarks() {
        var configuration = FlowControlConfiguration()
        configuration.highWatermarkMessages = 3
        configuration.lowWatermarkMessages = 1
        var marks = InboundWatermarks(limits: .init(configuration))
        #expect(marks.pushed(size: 1) == .queued)
        #expect(marks.pushed(size: 1) == .queued)
        #expect(marks.pushed(size: 1) == .slowDown)
        #expect(marks.pushed(size: 1) == .queued)
        let resumes = (0..<3).map { _ in marks.popped(size: 1) }
        #expect(resumes == [false, false, true])
        for _ in 0..<4 { _ = marks.pushed(size: 1) }
        #expect(marks.pushed(size: 1) == .overloaded)
    }
}
