import NIOCore
import Testing

@testable import Messaging

// MARK: - Helpers

private let serverHello = Hello(nodeID: "server", role: "server", sessionID: "s-1")
private let clientHello = Hello(nodeID: "collab-1", role: "client")
private let frameTimestamp: UInt64 = 1_700_000_000_000_000
/// Spelled out so that `.none` is never taken for `Optional.none`.
private let noAction = SessionStateMachine.InboundAction.none

private func machineConfiguration(
    _ role: SessionStateMachine.Role,
    heartbeatInterval: TimeAmount = .seconds(5),
    requiredIdentity: String? = nil
) -> SessionStateMachine.Configuration {
    SessionStateMachine.Configuration(
        role: role,
        hello: role == .server ? serverHello : clientHello,
        heartbeatInterval: heartbeatInterval,
        maxFrame: 1 << 20,
        requiredIdentity: requiredIdentity
    )
}

private func helloFrame(_ hello: Hello) -> Frame {
    Frame(type: .hello, payload: ByteBuffer(bytes: hello.encoded()))
}

private func helloFrame(json: String) -> Frame {
    Frame(type: .hello, payload: ByteBuffer(string: json))
}

private func dataFrame(id: UInt64, flags: DataFlags = [], topic: String = "t", body: String = "body") -> Frame {
    var payload = ByteBuffer()
    payload.writeInteger(UInt8(topic.utf8.count))
    payload.writeString(topic)
    payload.writeString(body)
    return Frame(type: .data, flags: flags.rawValue, id: id, timestamp: frameTimestamp, payload: payload)
}

/// The message ``dataFrame(id:flags:topic:body:)`` should turn into.
private func message(id: UInt64, flags: DataFlags = [], topic: String = "t", body: String = "body") -> Message {
    Message(topic: topic, body: ByteBuffer(string: body), id: id, flags: flags, timestamp: frameTimestamp)
}

private func errorFrame(_ code: ErrorCode, _ reason: String) -> Frame {
    var payload = ByteBuffer()
    payload.writeInteger(code.rawValue)
    payload.writeString(reason)
    return Frame(type: .error, payload: payload)
}

private func flowFrame(_ signal: FlowSignal) -> Frame {
    Frame(type: .flow, payload: ByteBuffer(bytes: [signal.rawValue]))
}

/// A server whose transport is ready, not yet open.
private func readyServer(requiredIdentity: String? = nil) -> SessionStateMachine {
    var machine = SessionStateMachine(configuration: machineConfiguration(.server, requiredIdentity: requiredIdentity))
    let hello = machine.transportReady()
    #expect(hello == nil)
    return machine
}

/// A server that has accepted `peer`'s HELLO.
private func openServer(peer: Hello = clientHello) -> SessionStateMachine {
    var machine = readyServer()
    let action = machine.receive(helloFrame(peer))
    #expect(action == .opened(peer: peer, reply: serverHello))
    #expect(machine.state == .open)
    return machine
}

/// A client that has sent its HELLO and received `peer`'s.
private func openClient(peer: Hello = serverHello) -> SessionStateMachine {
    var machine = SessionStateMachine(configuration: machineConfiguration(.client))
    let sent = machine.transportReady()
    #expect(sent == clientHello)
    let action = machine.receive(helloFrame(peer))
    #expect(action == .opened(peer: peer, reply: nil))
    #expect(machine.state == .open)
    return machine
}

/// Records an issue unless `action` is `.fail` with `code`.
private func expectFail(
    _ action: SessionStateMachine.InboundAction,
    _ code: ErrorCode,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    guard case .fail(let violation) = action else {
        Issue.record("expected .fail(\(code)), got \(action)", sourceLocation: sourceLocation)
        return
    }
    #expect(violation.code == code, sourceLocation: sourceLocation)
    #expect(!violation.reason.isEmpty, sourceLocation: sourceLocation)
}

extension SessionStateMachine {
    /// `prepareData`'s refusal, or nil when it accepted (and numbered) the message.
    fileprivate mutating func prepareRefusal(topicBytes: Int, bodyBytes: Int, flags: DataFlags) -> SendRefusal? {
        do {
            _ = try self.prepareData(topicBytes: topicBytes, bodyBytes: bodyBytes, flags: flags)
            return nil
        } catch {
            return error
        }
    }

    /// `respond(to:topicBytes:bodyBytes:)`'s refusal, or nil when the RESPONSE may go.
    fileprivate mutating func respondRefusal(to requestID: UInt64, topicBytes: Int, bodyBytes: Int) -> SendRefusal? {
        do {
            try self.respond(to: requestID, topicBytes: topicBytes, bodyBytes: bodyBytes)
            return nil
        } catch {
            return error
        }
    }
}

/// Records an issue unless `refusal` is `expected` (nil: accepted). Not `#expect` directly: it cannot
/// take a mutating call.
private func expectRefusal(
    _ refusal: SessionStateMachine.SendRefusal?,
    _ expected: SessionStateMachine.SendRefusal?,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(refusal == expected, sourceLocation: sourceLocation)
}

/// Frames a server must not accept before the session is open. (The client sends only HELLO
/// before the session is open, so even its ERROR is out of sequence.)
private let framesBeforeOpen: [Frame] = [
    dataFrame(id: 1),
    dataFrame(id: 1, flags: .request),
    dataFrame(id: 1, flags: .response),
    Frame(type: .ack, id: 1),
    Frame(type: .ping, id: 1),
    Frame(type: .ping, id: 1, payload: ByteBuffer(bytes: [1, 2, 3])),
    Frame(type: .pong, id: 1),
    flowFrame(.slowDown),
    flowFrame(.resume),
    Frame(type: .goodbye),
    errorFrame(.internal, "oops"),
]

// MARK: - Tests

@Suite("Session state machine")
struct SessionStateMachineTests {
    // MARK: HELLO exchange, server

    @Test("server: anything but HELLO before open is a PROTOCOL_ERROR", arguments: framesBeforeOpen, [false, true])
    func serverRejectsBeforeOpen(frame: Frame, transportReady: Bool) {
        var machine = SessionStateMachine(configuration: machineConfiguration(.server))
        #expect(machine.state == .idle)
        if transportReady {
            let hello = machine.transportReady()
            #expect(hello == nil)
            #expect(machine.state == .awaitingHello)
        }
        expectFail(machine.receive(frame), .protocolError)
        #expect(machine.state == .closed)
        #expect(!machine.isOpen)
        // Closed: a HELLO now changes nothing.
        let late = machine.receive(helloFrame(clientHello))
        #expect(late == noAction)
        #expect(machine.state == .closed)
    }

    @Test("transportReady: nil for a server, its HELLO for a client, once")
    func transportReady() {
        var server = SessionStateMachine(configuration: machineConfiguration(.server))
        let serverSends = server.transportReady()
        #expect(serverSends == nil)
        #expect(server.state == .awaitingHello)
        let serverAgain = server.transportReady()
        #expect(serverAgain == nil)
        #expect(server.state == .awaitingHello)

        var client = SessionStateMachine(configuration: machineConfiguration(.client))
        #expect(client.state == .idle)
        let clientSends = client.transportReady()
        #expect(clientSends == clientHello)
        #expect(client.state == .awaitingHello)
        let clientAgain = client.transportReady()
        #expect(clientAgain == nil)
        #expect(client.state == .awaitingHello)
    }

    @Test("server: a valid client HELLO opens the session and is answered with the server's HELLO")
    func serverOpens() {
        var machine = readyServer()
        #expect(machine.peerHello == nil)
        let peer = Hello(nodeID: "collab-1", role: "client", heartbeatMilliseconds: 2_000, metadata: ["k": "v"])
        let action = machine.receive(helloFrame(peer))
        #expect(action == .opened(peer: peer, reply: serverHello))
        #expect(machine.state == .open)
        #expect(machine.isOpen)
        #expect(machine.peerHello == peer)
    }

    @Test("server: a client HELLO's session_id is ignored")
    func serverIgnoresClientSessionID() {
        var machine = readyServer()
        let json = #"{"protocol":"smsg","version":1,"node_id":"collab-1","role":"client","session_id":"x"}"#
        let action = machine.receive(helloFrame(json: json))
        #expect(action == .opened(peer: clientHello, reply: serverHello))
    }

    @Test("a second HELLO is a PROTOCOL_ERROR, on either side")
    func secondHello() {
        var server = openServer()
        expectFail(server.receive(helloFrame(clientHello)), .protocolError)
        #expect(server.state == .closed)

        var client = openClient()
        expectFail(client.receive(helloFrame(serverHello)), .protocolError)
        #expect(client.state == .closed)
    }

    @Test(
        "server: a bad HELLO is a PROTOCOL_ERROR",
        arguments: [
            "",
            "not json",
            "[]",
            "{}",
            #"{"protocol":"smsg","version":1,"role":"client"}"#,
            #"{"protocol":"smsg","version":1,"node_id":"a b","role":"client"}"#,
            #"{"protocol":"other","version":1,"node_id":"collab-1","role":"client"}"#,
            #"{"protocol":"smsg","version":"1","node_id":"collab-1","role":"client"}"#,
        ]
    )
    func badHello(json: String) {
        var machine = readyServer()
        expectFail(machine.receive(helloFrame(json: json)), .protocolError)
        #expect(machine.state == .closed)
        #expect(machine.peerHello == nil)
    }

    @Test("server: a HELLO that is not UTF-8 is a PROTOCOL_ERROR")
    func helloNotUTF8() {
        var machine = readyServer()
        let bytes = Array(#"{"protocol":"smsg","version":1,"node_id":"collab-1","role":""#.utf8) + [0xFF, 0x22, 0x7D]
        expectFail(machine.receive(Frame(type: .hello, payload: ByteBuffer(bytes: bytes))), .protocolError)
        #expect(machine.state == .closed)
    }

    @Test("server: version 2 is UNSUPPORTED_VERSION")
    func unsupportedVersion() {
        var machine = readyServer()
        let json = #"{"protocol":"smsg","version":2,"node_id":"collab-1","role":"client"}"#
        expectFail(machine.receive(helloFrame(json: json)), .unsupportedVersion)
        #expect(machine.state == .closed)
    }

    @Test("server: a required identity must equal node_id, else UNAUTHORIZED")
    func requiredIdentity() {
        var wrong = readyServer()
        wrong.requireIdentity("collab-1")
        expectFail(wrong.receive(helloFrame(Hello(nodeID: "collab-2", role: "client"))), .unauthorized)
        #expect(wrong.state == .closed)
        #expect(wrong.peerHello == nil)

        var right = readyServer()
        right.requireIdentity("collab-1")
        let action = right.receive(helloFrame(Hello(nodeID: "collab-1", role: "client")))
        #expect(action == .opened(peer: Hello(nodeID: "collab-1", role: "client"), reply: serverHello))
        #expect(right.state == .open)

        // Set through the configuration as well.
        var configured = readyServer(requiredIdentity: "collab-1")
        expectFail(configured.receive(helloFrame(Hello(nodeID: "Collab-1", role: "client"))), .unauthorized)
    }

    @Test("server: no certificate where an identity is required says so, not 'does not match'")
    func noCertificateToCheck() {
        var machine = readyServer()
        machine.requireIdentity("")
        let action = machine.receive(helloFrame(Hello(nodeID: "collab-1", role: "client")))
        guard case .fail(let violation) = action else {
            Issue.record("expected UNAUTHORIZED, got \(action)")
            return
        }
        #expect(
            violation == ProtocolViolation(.unauthorized, "no client certificate identity to check the node_id against")
        )
    }

    @Test("server: the HELLO itself is checked before the identity")
    func helloCheckedBeforeIdentity() {
        var badJSON = readyServer(requiredIdentity: "collab-1")
        expectFail(badJSON.receive(helloFrame(json: "{")), .protocolError)

        var badVersion = readyServer(requiredIdentity: "collab-1")
        let json = #"{"protocol":"smsg","version":2,"node_id":"collab-2","role":"client"}"#
        expectFail(badVersion.receive(helloFrame(json: json)), .unsupportedVersion)
    }

    @Test("hello timeout before open: ERROR TIMEOUT and closed", arguments: [false, true])
    func helloTimedOutBeforeOpen(transportReady: Bool) {
        var machine = SessionStateMachine(configuration: machineConfiguration(.server))
        if transportReady {
            _ = machine.transportReady()
        }
        let action = machine.helloTimedOut()
        guard case .fail(let violation) = action else {
            Issue.record("expected ERROR TIMEOUT, got \(action)")
            return
        }
        #expect(violation.code == .timeout)
        #expect(machine.state == .closed)
        let late = machine.receive(helloFrame(clientHello))
        #expect(late == noAction)
    }

    @Test("client hello timeout: close without an ERROR (it sends nothing before the server's HELLO)")
    func clientHelloTimeout() {
        var machine = SessionStateMachine(configuration: machineConfiguration(.client))
        _ = machine.transportReady()
        #expect(machine.helloTimedOut() == .close)
        #expect(machine.state == .closed)
    }

    @Test("hello timeout after open: nothing")
    func helloTimedOutAfterOpen() {
        var server = openServer()
        let action = server.helloTimedOut()
        #expect(action == .none)
        #expect(server.state == .open)

        var client = openClient()
        let clientAction = client.helloTimedOut()
        #expect(clientAction == .none)
        #expect(client.state == .open)
    }

    // MARK: HELLO exchange, client

    @Test("client: ERROR before open is the peer failing")
    func clientReceivesErrorBeforeOpen() {
        var machine = SessionStateMachine(configuration: machineConfiguration(.client))
        _ = machine.transportReady()
        let action = machine.receive(errorFrame(.serverBusy, "too many connections"))
        #expect(action == .peerFailed(.serverBusy, "too many connections"))
        #expect(machine.state == .closed)
        let late = machine.receive(helloFrame(serverHello))
        #expect(late == noAction)
    }

    @Test("client: an unknown ERROR code is carried as it is")
    func clientReceivesUnknownCode() {
        var machine = SessionStateMachine(configuration: machineConfiguration(.client))
        _ = machine.transportReady()
        let action = machine.receive(errorFrame(ErrorCode(rawValue: 1234), "é"))
        #expect(action == .peerFailed(ErrorCode(rawValue: 1234), "é"))
    }

    @Test("client: the server's HELLO opens the session with no reply")
    func clientOpens() {
        var machine = SessionStateMachine(configuration: machineConfiguration(.client))
        _ = machine.transportReady()
        let action = machine.receive(helloFrame(serverHello))
        #expect(action == .opened(peer: serverHello, reply: nil))
        #expect(machine.peerHello?.sessionID == "s-1")
        #expect(machine.state == .open)
    }

    @Test("client: a server HELLO without session_id is a PROTOCOL_ERROR")
    func serverHelloWithoutSessionID() {
        var machine = SessionStateMachine(configuration: machineConfiguration(.client))
        _ = machine.transportReady()
        expectFail(machine.receive(helloFrame(Hello(nodeID: "server", role: "server"))), .protocolError)
        #expect(machine.state == .closed)

        var empty = SessionStateMachine(configuration: machineConfiguration(.client))
        _ = empty.transportReady()
        let json = #"{"protocol":"smsg","version":1,"node_id":"server","role":"server","session_id":""}"#
        expectFail(empty.receive(helloFrame(json: json)), .protocolError)
    }

    @Test(
        "client: anything but HELLO or ERROR before open is a PROTOCOL_ERROR",
        arguments: [
            dataFrame(id: 1),
            Frame(type: .ping, id: 1),
            Frame(type: .pong, id: 1),
            Frame(type: .ack, id: 1),
            flowFrame(.slowDown),
            Frame(type: .goodbye),
        ]
    )
    func clientRejectsBeforeOpen(frame: Frame) {
        var machine = SessionStateMachine(configuration: machineConfiguration(.client))
        _ = machine.transportReady()
        expectFail(machine.receive(frame), .protocolError)
        #expect(machine.state == .closed)
    }

    // MARK: Open session, inbound

    @Test("DATA ids 1, 2, 3 are delivered in order")
    func dataInSequence() {
        var machine = openServer()
        for id: UInt64 in 1...3 {
            let action = machine.receive(dataFrame(id: id, topic: "topic-\(id)", body: "body \(id)"))
            #expect(action == .deliver(message(id: id, topic: "topic-\(id)", body: "body \(id)")))
        }
        #expect(machine.state == .open)
    }

    @Test("DATA delivers topic, body, flags and timestamp as sent")
    func dataContents() {
        var machine = openClient()
        let action = machine.receive(dataFrame(id: 1, flags: .ackRequested, topic: "", body: ""))
        let expected = Message(topic: "", body: ByteBuffer(), id: 1, flags: .ackRequested, timestamp: frameTimestamp)
        #expect(action == .deliver(expected))
    }

    @Test("a DATA id that skips ahead is a PROTOCOL_ERROR")
    func dataSkipsAhead() {
        var machine = openServer()
        for id: UInt64 in 1...3 {
            let action = machine.receive(dataFrame(id: id))
            #expect(action == .deliver(message(id: id)))
        }
        expectFail(machine.receive(dataFrame(id: 5)), .protocolError)
        #expect(machine.state == .closed)
        let late = machine.receive(dataFrame(id: 4))
        #expect(late == noAction)
    }

    @Test("a repeated DATA id is a PROTOCOL_ERROR")
    func dataRepeats() {
        var machine = openServer()
        _ = machine.receive(dataFrame(id: 1))
        _ = machine.receive(dataFrame(id: 2))
        expectFail(machine.receive(dataFrame(id: 2)), .protocolError)
        #expect(machine.state == .closed)
    }

    @Test("the first DATA must have id 1", arguments: [UInt64(0), 2, 3, .max])
    func firstDataID(id: UInt64) {
        var machine = openServer()
        expectFail(machine.receive(dataFrame(id: id)), .protocolError)
        #expect(machine.state == .closed)
    }

    @Test("a REQUEST is numbered like any DATA")
    func requestNumbered() {
        var machine = openServer()
        let first = machine.receive(dataFrame(id: 1, flags: .request))
        #expect(first == .deliver(message(id: 1, flags: .request)))
        expectFail(machine.receive(dataFrame(id: 3, flags: .request)), .protocolError)
    }

    @Test("a RESPONSE takes no sequence number and is reported as a response")
    func responseTakesNoNumber() {
        var machine = openServer()
        // Before any DATA: a RESPONSE with any id is fine and does not count as DATA 1.
        let early = machine.receive(dataFrame(id: 1, flags: .response))
        #expect(early == .response(message(id: 1, flags: .response)))
        let first = machine.receive(dataFrame(id: 1))
        #expect(first == .deliver(message(id: 1)))

        let flags: DataFlags = [.response, .ackRequested]
        let response = machine.receive(dataFrame(id: 99, flags: flags, topic: "r", body: "answer"))
        #expect(response == .response(message(id: 99, flags: flags, topic: "r", body: "answer")))
        let second = machine.receive(dataFrame(id: 2))
        #expect(second == .deliver(message(id: 2)))
        #expect(machine.state == .open)
    }

    @Test("a received REQUEST is owed a RESPONSE, once")
    func owedResponses() {
        var machine = openServer()
        #expect(machine.owedResponses.isEmpty)
        #expect(machine.mayAnswerGoodbye)

        let action = machine.receive(dataFrame(id: 1, flags: [.request, .ackRequested]))
        #expect(action == .deliver(message(id: 1, flags: [.request, .ackRequested])))
        _ = machine.receive(dataFrame(id: 2))
        _ = machine.receive(dataFrame(id: 3, flags: .request))
        #expect(machine.owedResponses == [1, 3])
        #expect(!machine.mayAnswerGoodbye)

        // Never requested: no response.
        expectRefusal(machine.respondRefusal(to: 2, topicBytes: 1, bodyBytes: 1), .noSuchRequest)
        expectRefusal(machine.respondRefusal(to: 4, topicBytes: 1, bodyBytes: 1), .noSuchRequest)

        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 1, bodyBytes: 1), nil)
        #expect(machine.owedResponses == [3])
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 1, bodyBytes: 1), .noSuchRequest)
        expectRefusal(machine.respondRefusal(to: 3, topicBytes: 0, bodyBytes: 0), nil)
        #expect(machine.owedResponses.isEmpty)
        #expect(machine.mayAnswerGoodbye)
    }

    @Test("a refused RESPONSE stays owed")
    func refusedResponseStaysOwed() {
        var machine = openClient(peer: Hello(nodeID: "server", role: "server", maxFrame: 65_536, sessionID: "s-1"))
        _ = machine.receive(dataFrame(id: 1, flags: .request))
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 256, bodyBytes: 0), .topicTooLong)
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 1, bodyBytes: 65_535), .tooLarge(limit: 65_536))
        #expect(machine.owedResponses == [1])
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 1, bodyBytes: 65_534), nil)
        #expect(machine.owedResponses.isEmpty)
    }

    @Test("a RESPONSE sent does not use up a DATA number")
    func respondDoesNotNumber() throws {
        var machine = openServer()
        _ = machine.receive(dataFrame(id: 1, flags: .request))
        let first = try machine.prepareData(topicBytes: 1, bodyBytes: 1, flags: [])
        try machine.respond(to: 1, topicBytes: 1, bodyBytes: 1)
        let second = try machine.prepareData(topicBytes: 1, bodyBytes: 1, flags: .request)
        #expect(first == 1)
        #expect(second == 2)
    }

    @Test("PING is answered with a PONG of the same id")
    func ping() {
        var machine = openServer()
        let action = machine.receive(Frame(type: .ping, id: 7))
        #expect(action == .sendPong(id: 7))
        let withBlob = machine.receive(Frame(type: .ping, id: 8, payload: ByteBuffer(bytes: [1, 2, 3])))
        #expect(withBlob == .sendPong(id: 8))
        #expect(machine.state == .open)
    }

    @Test("PONG, ACK and FLOW are reported")
    func controlFrames() {
        var machine = openClient()
        let pong = machine.receive(Frame(type: .pong, id: 3))
        #expect(pong == .pong(id: 3))
        let ack = machine.receive(Frame(type: .ack, id: 12))
        #expect(ack == .ack(id: 12))
        let slowDown = machine.receive(flowFrame(.slowDown))
        #expect(slowDown == .flow(.slowDown))
        let resume = machine.receive(flowFrame(.resume))
        #expect(resume == .flow(.resume))
        #expect(machine.state == .open)
        // None of them is DATA: the first DATA is still 1.
        let data = machine.receive(dataFrame(id: 1))
        #expect(data == .deliver(message(id: 1)))
    }

    @Test("ERROR when open: the peer failed, then everything is ignored")
    func errorWhenOpen() {
        var machine = openServer()
        _ = machine.receive(dataFrame(id: 1))
        let action = machine.receive(errorFrame(.overloaded, "queue full"))
        #expect(action == .peerFailed(.overloaded, "queue full"))
        #expect(machine.state == .closed)
        #expect(!machine.isOpen)
        for frame in [dataFrame(id: 2), dataFrame(id: 7), Frame(type: .ping, id: 1), errorFrame(.internal, "x")] {
            let late = machine.receive(frame)
            #expect(late == noAction)
        }
        #expect(machine.state == .closed)
    }

    // MARK: Open session, outbound

    @Test("prepareData numbers 1, 2, 3, …")
    func prepareDataNumbers() throws {
        var machine = openClient()
        var ids: [UInt64] = []
        for flags: DataFlags in [[], .request, .ackRequested, [.request, .ackRequested], []] {
            ids.append(try machine.prepareData(topicBytes: 1, bodyBytes: 10, flags: flags))
        }
        #expect(ids == [1, 2, 3, 4, 5])
    }

    @Test("prepareData before open is refused with notOpen")
    func prepareDataBeforeOpen() {
        var machine = SessionStateMachine(configuration: machineConfiguration(.client))
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 1, flags: []), .notOpen)
        _ = machine.transportReady()
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 1, flags: []), .notOpen)
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 1, bodyBytes: 1), .notOpen)
    }

    @Test("prepareData refuses a payload over the peer's max_frame")
    func prepareDataTooLarge() throws {
        var machine = openClient(peer: Hello(nodeID: "server", role: "server", maxFrame: 65_536, sessionID: "s-1"))
        #expect(machine.peerMaxFrame == 65_536)
        // 1 (topic_len) + 1 + 65,535 = 65,537 > 65,536.
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 65_535, flags: []), .tooLarge(limit: 65_536))
        expectRefusal(machine.prepareRefusal(topicBytes: 255, bodyBytes: 65_281, flags: []), .tooLarge(limit: 65_536))
        // Exactly 65,536 fits, and the refusals took no number.
        let id = try machine.prepareData(topicBytes: 1, bodyBytes: 65_534, flags: [])
        #expect(id == 1)
        #expect(machine.state == .open)
    }

    @Test("without max_frame in the peer's HELLO the limit is 1 MiB")
    func prepareDataDefaultLimit() throws {
        var machine = openClient()
        #expect(machine.peerMaxFrame == 1 << 20)
        expectRefusal(machine.prepareRefusal(topicBytes: 0, bodyBytes: 1 << 20, flags: []), .tooLarge(limit: 1 << 20))
        let id = try machine.prepareData(topicBytes: 0, bodyBytes: (1 << 20) - 1, flags: [])
        #expect(id == 1)
    }

    @Test("a topic over 255 bytes is refused")
    func topicTooLong() throws {
        var machine = openServer()
        expectRefusal(machine.prepareRefusal(topicBytes: 256, bodyBytes: 0, flags: []), .topicTooLong)
        let id = try machine.prepareData(topicBytes: 255, bodyBytes: 0, flags: [])
        #expect(id == 1)
    }

    // MARK: GOODBYE

    @Test("peer GOODBYE while open: goodbyeReceived, then new DATA is a PROTOCOL_ERROR")
    func goodbyeThenData() {
        var machine = openServer()
        _ = machine.receive(dataFrame(id: 1))
        let action = machine.receive(Frame(type: .goodbye))
        #expect(action == .goodbyeReceived)
        #expect(machine.state == .draining(sentGoodbye: false, receivedGoodbye: true))
        expectFail(machine.receive(dataFrame(id: 2)), .protocolError)
        #expect(machine.state == .closed)
    }

    @Test("peer GOODBYE: a REQUEST after it is a PROTOCOL_ERROR too")
    func goodbyeThenRequest() {
        var machine = openServer()
        _ = machine.receive(Frame(type: .goodbye))
        expectFail(machine.receive(dataFrame(id: 1, flags: .request)), .protocolError)
    }

    @Test("peer GOODBYE: RESPONSEs and control frames still flow")
    func goodbyeThenResponse() {
        var machine = openServer()
        _ = machine.receive(Frame(type: .goodbye))
        let response = machine.receive(dataFrame(id: 4, flags: .response))
        #expect(response == .response(message(id: 4, flags: .response)))
        let ping = machine.receive(Frame(type: .ping, id: 2))
        #expect(ping == .sendPong(id: 2))
        let ack = machine.receive(Frame(type: .ack, id: 1))
        #expect(ack == .ack(id: 1))
        #expect(machine.state == .draining(sentGoodbye: false, receivedGoodbye: true))
    }

    @Test("peer GOODBYE: no new DATA may be sent, owed RESPONSEs may")
    func goodbyeThenSend() {
        var machine = openServer()
        _ = machine.receive(dataFrame(id: 1, flags: .request))
        _ = machine.receive(Frame(type: .goodbye))
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 1, flags: []), .closing)
        #expect(!machine.mayAnswerGoodbye)
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 1, bodyBytes: 1), nil)
        #expect(machine.mayAnswerGoodbye)
    }

    @Test("after receiving GOODBYE, sendGoodbye sends it and completes the close")
    func answerGoodbye() {
        var machine = openClient()
        _ = machine.receive(Frame(type: .goodbye))
        let result = machine.sendGoodbye()
        #expect(result.send)
        #expect(result.complete)
        #expect(machine.state == .closed)
        let again = machine.sendGoodbye()
        #expect(!again.send)
        #expect(!again.complete)
    }

    @Test("sendGoodbye when open, then the peer's GOODBYE completes the close")
    func goodbyeExchange() {
        var machine = openServer()
        let result = machine.sendGoodbye()
        #expect(result.send)
        #expect(!result.complete)
        #expect(machine.state == .draining(sentGoodbye: true, receivedGoodbye: false))

        // Only one GOODBYE goes out.
        let again = machine.sendGoodbye()
        #expect(!again.send)

        let action = machine.receive(Frame(type: .goodbye))
        #expect(action == .goodbyeComplete)
        #expect(machine.state == .closed)
        let late = machine.receive(dataFrame(id: 1))
        #expect(late == noAction)
    }

    @Test("after sending GOODBYE: no new DATA, but RESPONSEs owed and the peer's DATA still flow")
    func afterSendingGoodbye() {
        var machine = openServer()
        _ = machine.receive(dataFrame(id: 1, flags: .request))
        _ = machine.sendGoodbye()
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 1, flags: []), .closing)
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 1, flags: .request), .closing)
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 1, bodyBytes: 1), nil)
        // The peer may not have seen our GOODBYE yet.
        let data = machine.receive(dataFrame(id: 2))
        #expect(data == .deliver(message(id: 2)))
        let response = machine.receive(dataFrame(id: 1, flags: .response))
        #expect(response == .response(message(id: 1, flags: .response)))
    }

    @Test("mayAnswerGoodbye is false while a REQUEST is owed")
    func mayAnswerGoodbye() {
        var machine = openServer()
        _ = machine.receive(dataFrame(id: 1, flags: .request))
        let action = machine.receive(Frame(type: .goodbye))
        #expect(action == .goodbyeReceived)
        #expect(!machine.mayAnswerGoodbye)
        #expect(machine.owedResponses == [1])
        // GOODBYE cannot be answered before the owed RESPONSE is sent.
        let early = machine.sendGoodbye()
        #expect(!early.send && !early.complete)
        expectRefusal(machine.respondRefusal(to: 1, topicBytes: 0, bodyBytes: 0), nil)
        #expect(machine.mayAnswerGoodbye)
        let result = machine.sendGoodbye()
        #expect(result.send && result.complete)
    }

    @Test("ERROR while draining: the peer failed")
    func errorWhileDraining() {
        var machine = openServer()
        _ = machine.sendGoodbye()
        let action = machine.receive(errorFrame(.goingAway, "shutting down"))
        #expect(action == .peerFailed(.goingAway, "shutting down"))
        #expect(machine.state == .closed)
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 1, flags: []), .closing)
    }

    @Test("close() stops everything")
    func close() {
        var machine = openServer()
        machine.close()
        #expect(machine.state == .closed)
        let late = machine.receive(dataFrame(id: 1))
        #expect(late == noAction)
        expectRefusal(machine.prepareRefusal(topicBytes: 1, bodyBytes: 1, flags: []), .closing)
        let goodbye = machine.sendGoodbye()
        #expect(!goodbye.send)
    }

    // MARK: Heartbeats

    @Test(
        "heartbeat timeout is 3 × the larger of our interval and the peer's heartbeat_ms (5000 when absent)",
        arguments: [
            (Int64(5_000), 2_000, Int64(15_000)),
            (5_000, 10_000, 30_000),
            (5_000, nil, 15_000),
            (8_000, nil, 24_000),
            (2_000, nil, 15_000),
            (2_000, 1_000, 6_000),
            (20_000, 10_000, 60_000),
            (5_000, 5_001, 15_003),
        ] as [(Int64, Int?, Int64)]
    )
    func heartbeatTimeout(ownMilliseconds: Int64, peerMilliseconds: Int?, expectedMilliseconds: Int64) {
        var machine = SessionStateMachine(
            configuration: machineConfiguration(.server, heartbeatInterval: .milliseconds(ownMilliseconds))
        )
        _ = machine.transportReady()
        let peer = Hello(nodeID: "collab-1", role: "client", heartbeatMilliseconds: peerMilliseconds)
        let action = machine.receive(helloFrame(peer))
        #expect(action == .opened(peer: peer, reply: serverHello))
        #expect(machine.heartbeatTimeout == .milliseconds(expectedMilliseconds))
    }

    @Test("heartbeat timeout from a server's HELLO, on the client")
    func heartbeatTimeoutOnClient() {
        let machine = openClient(
            peer: Hello(nodeID: "server", role: "server", heartbeatMilliseconds: 10_000, sessionID: "s-1")
        )
        #expect(machine.heartbeatTimeout == .seconds(30))
        #expect(machine.peerHeartbeatInterval == .seconds(10))
    }

    @Test("PING ids count up from 1")
    func pingIDs() {
        var machine = openServer()
        var ids: [UInt64] = []
        for _ in 0..<3 {
            ids.append(machine.nextPingID())
        }
        #expect(ids == [1, 2, 3])
    }

    // MARK: Headers whose payload is still arriving

    @Test("a pending header is checked against the sequence before its payload arrives")
    func pendingHeaders() {
        var server = SessionStateMachine(configuration: machineConfiguration(.server))
        _ = server.transportReady()
        let dataHeader = FrameHeader(length: 500_000, type: .data, flags: 0, id: 1)
        #expect(server.checkPendingHeader(dataHeader)?.code == .protocolError)
        #expect(server.checkPendingHeader(FrameHeader(length: 100, type: .hello, flags: 0, id: 0)) == nil)

        var open = openServer()
        #expect(open.checkPendingHeader(dataHeader) == nil)
        #expect(open.checkPendingHeader(FrameHeader(length: 10, type: .data, flags: 0, id: 2))?.code == .protocolError)
        #expect(open.checkPendingHeader(FrameHeader(length: 10, type: .hello, flags: 0, id: 0))?.code == .protocolError)
        let response = FrameHeader(length: 10, type: .data, flags: DataFlags.response.rawValue, id: 99)
        #expect(open.checkPendingHeader(response) == nil)
        _ = open.receive(Frame(type: .goodbye))
        #expect(open.checkPendingHeader(dataHeader)?.code == .protocolError)
    }

    @Test("a huge heartbeat_ms saturates instead of overflowing")
    func hugeHeartbeat() {
        var server = SessionStateMachine(configuration: machineConfiguration(.server))
        _ = server.transportReady()
        let json = #"{"protocol":"smsg","version":1,"node_id":"c","role":"r","heartbeat_ms":9223372036854775807}"#
        let action = server.receive(helloFrame(json: json))
        guard case .opened = action else {
            Issue.record("expected the HELLO to be accepted, got \(action)")
            return
        }
        #expect(server.heartbeatTimeout.nanoseconds == .max)
    }
}

/// The inputs of these tests at a fixed time: they are about frames and their order, not time
/// (the timing tests, with explicit times, are in SessionTimingTests).
extension SessionStateMachine {
    fileprivate static let testTime = NIODeadline.uptimeNanoseconds(1_000_000_000)

    fileprivate mutating func receive(_ frame: Frame) -> InboundAction {
        self.receive(frame, now: Self.testTime)
    }

    /// The transport is ready; returns the HELLO a client sends now.
    fileprivate mutating func transportReady() -> Hello? {
        guard case .waitForHello(let hello, _) = self.transportReady(peerIdentity: nil, now: Self.testTime) else {
            return nil
        }
        return hello
    }
}
