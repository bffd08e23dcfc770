import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import SecureMessagingTesting
import Testing

@testable import Cluster

/// A collaborator configuration with test timings and a capacity.
private func configuration(_ nodeID: String, capacity: Int = 64, announces: Bool = true) -> CollaboratorConfiguration {
    var configuration = TestCluster.collaboratorConfiguration(nodeID: nodeID)
    configuration.maximumConcurrentRequests = capacity
    configuration.announcesInterest = announces
    return configuration
}

/// A gate handlers wait at until it opens, counting who waits.
private final class Gate: Sendable {
    private let state = NIOLockedValueBox((open: false, waiting: 0, started: [String]()))

    var waiting: Int { self.state.withLockedValue { $0.waiting } }
    var started: [String] { self.state.withLockedValue { $0.started } }

    func open() { self.state.withLockedValue { $0.open = true } }

    func pass(_ name: String) async throws {
        self.state.withLockedValue {
            $0.waiting += 1
            $0.started.append(name)
        }
        defer { self.state.withLockedValue { $0.waiting -= 1 } }
        while !self.state.withLockedValue({ $0.open }) {
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

@Suite("Capacity is backpressure")
struct CapacityTests {
    @Test(
        "2,000 concurrent requests from a collaborator to its leader all succeed (the router's limit makes them wait)"
    )
    func burstToLeader() async throws {
        try await withTestCluster { cluster in
            cluster.leader.onRequest(topic: "echo") { message, _ in message.body }
            let worker = try await cluster.addCollaborator("collab-1")
            // Connected on its side too (until then requests wait for the connection, at most
            // 1,024 of them: ReconnectingClient's DisconnectedSendPolicy).
            #expect(await eventually("connected") { worker.session?.currentState == .open })
            let answers = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<2_000 {
                    group.addTask {
                        let answer = try await worker.request(topic: "echo", body: ByteBuffer(string: "\(index)"))
                        return Int(String(buffer: answer.body)) == index ? 1 : 0
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(answers == 2_000)
        }
    }

    @Test("2,000 concurrent requests from the leader to a collaborator all succeed")
    func burstToCollaborator() async throws {
        try await withTestCluster { cluster in
            _ = try await cluster.addCollaborator("collab-1") { collaborator in
                collaborator.onRequest(topic: "echo") { message, _ in message.body }
            }
            let leader = cluster.leader
            let answers = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<2_000 {
                    group.addTask {
                        let answer = try await leader.request(
                            to: "collab-1",
                            topic: "echo",
                            body: ByteBuffer(string: "\(index)")
                        )
                        return Int(String(buffer: answer.body)) == index ? 1 : 0
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(answers == 2_000)
        }
    }
}

extension CapacityTests {
    @Test("a request given up while it waited for a slot is not run")
    func givenUpWhileWaiting() async throws {
        var leaderConfiguration = TestCluster.leaderConfiguration()
        leaderConfiguration.maximumConcurrentRequests = 1
        try await withTestCluster(configuration: leaderConfiguration) { cluster in
            let gate = Gate()
            cluster.leader.onRequest(topic: "hold") { message, _ in
                try await gate.pass(String(buffer: message.body))
                return message.body
            }
            let worker = try await cluster.addCollaborator("collab-1")
            #expect(await eventually("connected") { worker.session?.currentState == .open })
            let held = Task { try await worker.request(topic: "hold", body: ByteBuffer(string: "first")) }
            #expect(await eventually("in the handler") { gate.waiting == 1 })
            // Two wait behind the first for the one slot: one is cancelled by its caller (a CANCEL
            // well before its deadline), the other times out.
            let cancelled = Task {
                try await worker.request(topic: "hold", body: ByteBuffer(string: "cancelled"), timeout: .seconds(30))
            }
            await #expect(throws: RequestError.self) {
                try await worker.request(topic: "hold", body: ByteBuffer(string: "late"), timeout: .milliseconds(200))
            }
            cancelled.cancel()
            _ = try? await cancelled.value
            gate.open()
            #expect(String(buffer: try await held.value.body) == "first")
            let third = try await worker.request(topic: "hold", body: ByteBuffer(string: "third"))
            #expect(String(buffer: third.body) == "third")
            #expect(gate.started == ["first", "third"], "neither the cancelled nor the late one ran")
        }
    }
}

@Suite("Topic interest")
struct TopicInterestTests {
    @Test("patterns: exact, P.> and >")
    func patterns() {
        #expect(TopicInterest.pattern("jobs.>", matches: "jobs.resize"))
        #expect(TopicInterest.pattern("jobs.>", matches: "jobs.video.encode"))
        #expect(!TopicInterest.pattern("jobs.>", matches: "jobs"))
        #expect(!TopicInterest.pattern("jobs.>", matches: "jobs."))
        #expect(!TopicInterest.pattern("jobs.>", matches: "jobsx.a"))
        #expect(TopicInterest.pattern(">", matches: "anything"))
        #expect(TopicInterest.pattern("a>b", matches: "a>b"))
        #expect(!TopicInterest.pattern("a>b", matches: "a.b"))
        #expect(TopicInterest.pattern("exact", matches: "exact"))
        #expect(!TopicInterest.pattern("exact", matches: "exact.more"))
    }

    @Test("documents: read back what is written; every violation of PROTOCOL.md 8.5 is refused")
    func documents() throws {
        let interest = TopicInterest(requests: ["a", "jobs.>"], messages: ["news"], capacity: 8)
        #expect(try TopicInterest(document: Array(interest.encoded().utf8)) == interest)
        let invalid = [
            "[]", "{}", #"{"requests":[]}"#, #"{"requests":["a"],"messages":"b"}"#,
            #"{"requests":[""],"messages":[]}"#, #"{"requests":[1],"messages":[]}"#,
            #"{"requests":[],"messages":[],"capacity":0}"#, #"{"requests":[],"messages":[],"capacity":65536}"#,
            #"{"requests":[],"messages":[],"capacity":"8"}"#, "not json",
            #"{"requests":["\#(String(repeating: "x", count: 256))"],"messages":[]}"#,
        ]
        for text in invalid {
            #expect(throws: TopicInterest.Invalid.self, "\(text)") { try TopicInterest(document: Array(text.utf8)) }
        }
        let many = (0..<1_025).map { "\"t\($0)\"" }.joined(separator: ",")
        #expect(throws: TopicInterest.Invalid.self) {
            try TopicInterest(document: Array(#"{"requests":[\#(many)],"messages":[]}"#.utf8))
        }
        let unknownKey = #"{"requests":["a"],"messages":[],"later":true}"#
        #expect(try TopicInterest(document: Array(unknownKey.utf8)).requests == ["a"])
        // Too many handlers to list: it announces everything.
        let wide = TopicInterest.announcing(requests: (0..<1_100).map { "t\($0)" }, messages: [], capacity: 64)
        #expect(wide.requests == [">"] && wide.handlesMessages(on: "x"))
    }

    @Test("the router takes patterns: the exact topic first, then the longest pattern")
    func routerPatterns() async throws {
        try await withTestCluster { cluster in
            let worker = try await cluster.addCollaborator("collab-1")
            let leader = cluster.leader
            leader.onRequest(topic: "jobs.>") { _, _ in ByteBuffer(string: "jobs") }
            leader.onRequest(topic: "jobs.video.>") { _, _ in ByteBuffer(string: "video") }
            leader.onRequest(topic: "jobs.video.raw") { _, _ in ByteBuffer(string: "raw") }
            func ask(_ topic: String) async throws -> String {
                String(buffer: try await worker.request(topic: topic, body: ByteBuffer()).body)
            }
            #expect(try await ask("jobs.resize") == "jobs")
            #expect(try await ask("jobs.video.encode") == "video")
            #expect(try await ask("jobs.video.raw") == "raw")
            await #expect(throws: RequestError(.noHandler, "no handler for this topic")) {
                try await worker.request(topic: "jobs", body: ByteBuffer())
            }
            leader.router.removeHandlers(topic: "jobs.video.>")
            #expect(try await ask("jobs.video.encode") == "jobs")
        }
    }

    @Test("a collaborator announces its topics in HELLO and every change after it joined")
    func announcedAndUpdated() async throws {
        try await withTestCluster { cluster in
            let worker = try await cluster.addCollaborator("collab-1") { collaborator in
                collaborator.onRequest(topic: "jobs.>") { message, _ in message.body }
                collaborator.on(topic: "news") { _, _ in }
            }
            let leader = cluster.leader
            let delivered = NIOLockedValueBox(0)
            leader.on(topic: TopicInterest.updateTopic) { _, _ in delivered.withLockedValue { $0 += 1 } }
            let joined = try #require(leader.collaborator("collab-1")?.interest)
            #expect(joined == TopicInterest(requests: ["jobs.>"], messages: ["news"], capacity: 64))
            #expect(leader.collaborator("collab-1")?.metadata[TopicInterest.metadataKey] == nil)
            #expect(leader.collaborators(handling: "jobs.resize").map(\.nodeID) == ["collab-1"])
            #expect(leader.collaborators(handling: "news").map(\.nodeID) == ["collab-1"])
            #expect(leader.collaborators(handling: "other").isEmpty)

            worker.onRequest(topic: "late") { message, _ in message.body }
            try await cluster.waitUntil("the new topic announced") {
                leader.collaborators(handling: "late").count == 1
            }
            #expect(
                cluster.events.contains {
                    if case .interestChanged("collab-1", let interest) = $0 {
                        return interest.requests.contains("late")
                    }
                    return false
                }
            )
            worker.router.removeHandlers(topic: "news")
            try await cluster.waitUntil("the removal announced") {
                leader.collaborators(handling: "news").isEmpty
            }
            // The announcements are the leader's, not its handlers'.
            #expect(delivered.withLockedValue { $0 } == 0)
        }
    }

    @Test("a broadcast reaches those that handle its topic, and those that announced nothing; .all reaches all")
    func broadcastByInterest() async throws {
        try await withTestCluster { cluster in
            let received = NIOLockedValueBox([String]())
            for (name, topic) in [("collab-1", "news"), ("collab-2", "weather")] {
                _ = try await cluster.addCollaborator(name) { collaborator in
                    collaborator.on(topic: topic) { message, _ in
                        received.withLockedValue { $0.append("\(name):\(message.topic)") }
                    }
                }
            }
            // An older collaborator: no interest announced, and it still counts.
            _ = try await cluster.addCollaborator(
                "collab-3",
                configuration: configuration("collab-3", announces: false)
            ) {
                collaborator in
                collaborator.on(topic: "news") { message, _ in
                    received.withLockedValue { $0.append("collab-3:\(message.topic)") }
                }
            }
            let leader = cluster.leader
            #expect(leader.collaborator("collab-3")?.interest == nil)
            #expect(leader.broadcast(topic: "news", body: ByteBuffer(string: "n")) == 2)
            #expect(await eventually("both got it") { received.withLockedValue { $0.count } == 2 })
            #expect(Set(received.withLockedValue { $0 }) == ["collab-1:news", "collab-3:news"])
            #expect(leader.broadcast(topic: "news", body: ByteBuffer(string: "n"), reach: .all) == 3)
            // The old collaborator can still be asked by name.
            await #expect(throws: RequestError(.noHandler, "no handler for this topic")) {
                try await leader.request(to: "collab-3", topic: "nothing", body: ByteBuffer())
            }
        }
    }
}

extension TopicInterestTests {
    /// A raw client that lists `interest`, with `metadata` in its HELLO.
    private func rawClient(_ cluster: TestCluster, metadata: [String: String]) async throws -> SecureClient {
        var configuration = ClientConfiguration(nodeID: "collab-9")
        configuration.metadata = metadata
        configuration.session.extensions.insert(.interest)
        return try await SecureClient.connect(
            host: "127.0.0.1",
            port: cluster.port,
            transport: try cluster.certificates.clientTransport(nodeID: "collab-9"),
            serverHostname: "localhost",
            configuration: configuration
        )
    }

    @Test("an invalid announcement, in HELLO or as an update, or a flagged one, is PROTOCOL_ERROR")
    func violations() async throws {
        try await withTestCluster { cluster in
            let badHello = try await self.rawClient(cluster, metadata: [TopicInterest.metadataKey: #"{"requests":[]}"#])
            #expect(await eventually("closed") { badHello.session.currentState == .closed })
            #expect(badHello.session.closeReason?.errorCode == .protocolError)

            let good = #"{"requests":["a"],"messages":[]}"#
            let badUpdate = try await self.rawClient(cluster, metadata: [TopicInterest.metadataKey: good])
            #expect(await eventually("joined") { cluster.leader.collaborator("collab-9")?.interest?.requests == ["a"] })
            try await badUpdate.session.send(topic: TopicInterest.updateTopic, body: ByteBuffer(string: "[]"))
            #expect(await eventually("closed") { badUpdate.session.currentState == .closed })
            #expect(badUpdate.session.closeReason?.errorCode == .protocolError)

            let flagged = try await self.rawClient(cluster, metadata: [TopicInterest.metadataKey: good])
            _ = try? await flagged.session.request(
                topic: TopicInterest.updateTopic,
                body: ByteBuffer(string: good),
                timeout: .seconds(5)
            )
            #expect(await eventually("closed") { flagged.session.currentState == .closed })
            #expect(flagged.session.closeReason?.errorCode == .protocolError)
        }
    }

    @Test("applications cannot send on the reserved topic, either way")
    func reservedTopic() async throws {
        try await withTestCluster { cluster in
            let worker = try await cluster.addCollaborator("collab-1")
            await #expect(throws: MessagingError.self) {
                try await worker.send(topic: TopicInterest.updateTopic, body: ByteBuffer())
            }
            let refused = await #expect(throws: RequestError.self) {
                try await cluster.leader.request(to: "collab-1", topic: TopicInterest.updateTopic, body: ByteBuffer())
            }
            #expect(refused?.code == .invalidArgument)
            #expect(cluster.leader.broadcast(topic: TopicInterest.updateTopic, body: ByteBuffer()) == 0)
        }
    }

    @Test("a collaborator sends no update to a server that does not list interest")
    func oldLeader() async throws {
        let certificates = try TestCertificates()
        let topics = NIOLockedValueBox([String]())
        let server = SecureMessagingServer(
            configuration: ServerConfiguration(host: "127.0.0.1", port: 0),
            transport: try certificates.serverTransport(name: "leader"),
            logger: .quiet
        ) { session in
            for try await message in session.messages {
                topics.withLockedValue { $0.append(message.topic) }
            }
        }
        let serving = Task { try await server.run() }
        defer { serving.cancel() }
        let port = try await server.listeningAddress().port ?? 0
        let worker = Collaborator(
            leaderHost: "127.0.0.1",
            leaderPort: port,
            transport: try certificates.clientTransport(nodeID: "collab-1"),
            serverHostname: "localhost",
            configuration: TestCluster.collaboratorConfiguration(nodeID: "collab-1"),
            logger: .quiet
        )
        worker.onRequest(topic: "first") { message, _ in message.body }
        let running = Task { try await worker.run() }
        #expect(await eventually("connected") { worker.session?.currentState == .open })
        #expect(worker.session?.extensions.contains(.interest) == false)
        worker.onRequest(topic: "later") { message, _ in message.body }
        try await worker.send(topic: "marker", body: ByteBuffer())
        #expect(await eventually("the marker came") { topics.withLockedValue { $0 } == ["marker"] })
        await worker.leave()
        try await running.value
        server.shutdown()
        try await serving.value
    }
}

@Suite("Dispatch: choosing a collaborator")
struct DispatchSelectionTests {
    private func record(
        _ nodeID: String,
        outstanding: Int = 0,
        capacity: Int? = 64,
        rtt: Duration? = nil
    )
        -> CollaboratorRecord
    {
        let now = ContinuousClock.now
        var record = CollaboratorRecord(
            nodeID: nodeID,
            certificateIdentity: nodeID,
            remoteAddress: nil,
            role: "collaborator",
            connectedSince: now,
            lastSeen: now,
            roundTrip: rtt,
            status: nil,
            metadata: [:],
            state: .active,
            sessionID: nil,
            interest: TopicInterest(requests: ["work"], messages: [], capacity: capacity)
        )
        record.outstandingRequests = outstanding
        return record
    }

    private func selection(_ options: DispatchOptions = DispatchOptions()) -> DispatchSelection {
        DispatchSelection(topic: "work", options: options, excluded: [], defaultCapacity: 64)
    }

    @Test("least outstanding for its capacity; ties by a clearly shorter round trip, else in turn")
    func leastOutstanding() {
        let records = [
            self.record("a", outstanding: 3, capacity: 4),  // 0.75
            self.record("b", outstanding: 4, capacity: 16),  // 0.25
            self.record("c", outstanding: 1, capacity: 2),  // 0.5
        ]
        #expect(self.selection().choose(among: records, turn: 0) == .chosen("b"))
        let full = [self.record("a", outstanding: 4, capacity: 4), self.record("b", outstanding: 16, capacity: 16)]
        #expect(self.selection().choose(among: full, turn: 0) == .busy)
        let tied = [self.record("a", rtt: .milliseconds(9)), self.record("b", rtt: .milliseconds(2))]
        #expect(self.selection().choose(among: tied, turn: 0) == .chosen("b"))
        #expect(self.selection().choose(among: tied, turn: 1) == .chosen("b"))
        // Round trips within noise: the turn decides, so equal members share evenly.
        let even = [self.record("a", rtt: .microseconds(200)), self.record("b", rtt: .microseconds(300))]
        let picks = (0..<100).map { self.selection().choose(among: even, turn: $0) }
        #expect(picks.filter { $0 == .chosen("a") }.count == 50)
        // Loads within an eighth of capacity are equal: 3 and 7 of 64 are one step, and take turns.
        let close = [self.record("a", outstanding: 3), self.record("b", outstanding: 7)]
        #expect(self.selection().choose(among: close, turn: 0) == .chosen("a"))
        #expect(self.selection().choose(among: close, turn: 1) == .chosen("b"))
        #expect(
            self.selection().choose(among: [self.record("a", outstanding: 8), self.record("b")], turn: 0)
                == .chosen("b")
        )
    }

    @Test("a member that answers far slower than the others counts its load times its slowness")
    func slowMember() {
        let times: [String: Duration] = [
            "a": .milliseconds(2), "b": .milliseconds(3), "c": .milliseconds(2), "d": .milliseconds(2),
            "slow": .milliseconds(20),
        ]
        let slowness = DispatchSelection.slowness(of: ["a", "b", "c", "d", "slow"], answerTimes: times)
        #expect(slowness.keys.sorted() == ["slow"], "within twice the median: no penalty")
        #expect(slowness["slow"] == 10)
        // The slow one is not chosen while a fast one has room.
        let idle = ["a", "b", "c", "d", "slow"].map { self.record($0) }
        for turn in 0..<8 {
            #expect(self.selection().choose(among: idle, turn: turn, answerTimes: times) != .chosen("slow"))
        }
        // Chosen when the others' load is ten times its own: (1 + 60/64) × 1 < 10, not yet.
        let busy = ["a", "b", "c", "d"].map { self.record($0, outstanding: 60) } + [self.record("slow")]
        #expect(self.selection().choose(among: busy, turn: 0, answerTimes: times) != .chosen("slow"))
        let full = ["a", "b", "c", "d"].map { self.record($0, outstanding: 64) } + [self.record("slow")]
        #expect(self.selection().choose(among: full, turn: 0, answerTimes: times) == .chosen("slow"))
    }

    @Test("eligibility: active, handles the topic, announced (unless included), the predicate, not excluded")
    func eligibility() {
        var suspect = self.record("suspect")
        suspect.state = .suspect
        var other = self.record("other")
        other.interest = TopicInterest(requests: ["else"], messages: ["work"])
        var old = self.record("old")
        old.interest = nil
        var tagged = self.record("tagged")
        tagged.status = "draining"
        let records = [suspect, other, old, tagged]
        #expect(self.selection().choose(among: records, turn: 0) == .chosen("tagged"))
        let notDraining = DispatchOptions(eligible: { $0.status != "draining" })
        #expect(self.selection(notDraining).choose(among: records, turn: 0) == .none)
        let withOld = DispatchOptions(includesUnannounced: true, eligible: { $0.status != "draining" })
        #expect(self.selection(withOld).choose(among: records, turn: 0) == .chosen("old"))
        var excluding = self.selection()
        excluding.excluded = ["tagged"]
        #expect(excluding.choose(among: records, turn: 0) == .none)
    }

    @Test("affinity: a key stays with its collaborator; a join or a leave moves only that member's keys")
    func affinityStability() {
        let keys = (0..<2_000).map { "key-\($0)" }
        func owners(_ names: [String]) -> [String: String] {
            let records = names.map { self.record($0) }
            var owners: [String: String] = [:]
            for key in keys {
                guard
                    case .chosen(let owner) = self.selection(DispatchOptions(affinity: .key(key)))
                        .choose(among: records, turn: key.hashValue)
                else {
                    Issue.record("no owner for \(key)")
                    continue
                }
                owners[key] = owner
            }
            return owners
        }
        let eight = (1...8).map { "collab-\($0)" }
        let before = owners(eight)
        #expect(Set(before.values).count == 8, "every member owns keys")
        let largest = Dictionary(grouping: before.values, by: { $0 }).values.map(\.count).max() ?? 0
        #expect(largest < 2_000 / 8 * 2, "keys spread")
        // A leave: only the leaver's keys move.
        let afterLeave = owners(eight.filter { $0 != "collab-3" })
        for key in keys where before[key] != afterLeave[key] {
            #expect(before[key] == "collab-3", "\(key) moved from \(before[key] ?? "?")")
        }
        // A join: only keys the newcomer takes move.
        let afterJoin = owners(eight + ["collab-9"])
        let moved = keys.filter { before[$0] != afterJoin[$0] }
        #expect(!moved.isEmpty)
        for key in moved {
            #expect(afterJoin[key] == "collab-9")
        }
        // The owner at capacity: the request waits for it rather than going elsewhere.
        let key = keys[0]
        let owner = before[key]!
        let busy = eight.map { self.record($0, outstanding: $0 == owner ? 64 : 0) }
        #expect(self.selection(DispatchOptions(affinity: .key(key))).choose(among: busy, turn: 0) == .busy)
    }
}

@Suite("Dispatch: through a leader")
struct DispatchTests {
    @Test("requests go to collaborators that handle the topic, by capacity, and wait when all are full")
    func capacityAndWaiting() async throws {
        try await withTestCluster { cluster in
            let gate = Gate()
            for (name, capacity) in [("collab-1", 1), ("collab-2", 3)] {
                _ = try await cluster.addCollaborator(name, configuration: configuration(name, capacity: capacity)) {
                    collaborator in
                    collaborator.onRequest(topic: "work") { _, _ in
                        try await gate.pass(name)
                        return ByteBuffer(string: name)
                    }
                }
            }
            _ = try await cluster.addCollaborator("collab-3") { collaborator in
                collaborator.onRequest(topic: "other") { _, _ in ByteBuffer() }
            }
            let leader = cluster.leader
            let held = (0..<5).map { _ in
                Task { try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(20)) }
            }
            #expect(await eventually("four in handlers") { gate.waiting == 4 })
            // One per capacity: collab-1 one, collab-2 three; the fifth waits at the leader.
            #expect(
                await eventually("the fifth waits") { leader.state.withLockedValue { $0.dispatch.waitingCount } == 1 }
            )
            #expect(gate.started.filter { $0 == "collab-1" }.count == 1)
            #expect(gate.started.filter { $0 == "collab-2" }.count == 3)
            #expect(leader.collaborator("collab-2")?.outstandingRequests == 3)
            gate.open()
            var answers: [String] = []
            for task in held {
                answers.append(String(buffer: try await task.value.body))
            }
            #expect(answers.count == 5)
            #expect(!answers.contains("collab-3"))
            #expect(leader.collaborator("collab-1")?.outstandingRequests == 0)
        }
    }

    @Test("the wait is bounded: a full queue, and a deadline passed while waiting, are RESOURCE_EXHAUSTED")
    func boundedWaiting() async throws {
        var leaderConfiguration = TestCluster.leaderConfiguration()
        leaderConfiguration.dispatch.maximumWaiting = 1
        try await withTestCluster(configuration: leaderConfiguration) { cluster in
            let gate = Gate()
            _ = try await cluster.addCollaborator("collab-1", configuration: configuration("collab-1", capacity: 1)) {
                collaborator in
                collaborator.onRequest(topic: "work") { _, _ in
                    try await gate.pass("collab-1")
                    return ByteBuffer()
                }
            }
            let leader = cluster.leader
            let held = Task {
                try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(20))
            }
            #expect(await eventually("in the handler") { gate.waiting == 1 })
            let waiting = Task {
                try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(2))
            }
            #expect(await eventually("one waits") { leader.state.withLockedValue { $0.dispatch.waitingCount } == 1 })
            await #expect(
                throws: RequestError(.resourceExhausted, "too many dispatched requests wait for a collaborator")
            ) {
                try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(5))
            }
            await #expect(
                throws: RequestError(
                    .resourceExhausted,
                    "no collaborator that handles work had room before the deadline"
                )
            ) {
                try await waiting.value
            }
            await #expect(
                throws: RequestError(.unavailable, "no collaborator that handles nothing is connected and active")
            ) {
                try await leader.request(toAnyHandling: "nothing", body: ByteBuffer())
            }
            #expect(leader.state.withLockedValue { $0.dispatch.waitingCount } == 0)
            // A wait whose caller is cancelled leaves nothing behind.
            let cancelled = Task {
                try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(20))
            }
            #expect(await eventually("it waits") { leader.state.withLockedValue { $0.dispatch.waitingCount } == 1 })
            cancelled.cancel()
            let outcome = await #expect(throws: RequestError.self) { try await cancelled.value }
            #expect(outcome?.code == .cancelled)
            #expect(leader.state.withLockedValue { $0.dispatch.waitingCount } == 0)
            gate.open()
            _ = try await held.value
            #expect(
                await eventually("no request outstanding") { leader.collaborator("collab-1")?.outstandingRequests == 0 }
            )
            _ = try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(5))
        }
    }

    @Test("many waits cancelled at once, some just as a slot comes free, leak no slot")
    func cancellationStorm() async throws {
        try await withTestCluster { cluster in
            _ = try await cluster.addCollaborator("collab-1", configuration: configuration("collab-1", capacity: 2)) {
                collaborator in
                collaborator.onRequest(topic: "work") { _, _ in
                    try await Task.sleep(for: .milliseconds(1))
                    return ByteBuffer()
                }
            }
            let leader = cluster.leader
            for _ in 0..<5 {
                let tasks = (0..<50).map { _ in
                    Task { try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(20)) }
                }
                try await Task.sleep(for: .milliseconds(5))
                for task in tasks { task.cancel() }
                for task in tasks { _ = try? await task.value }
            }
            #expect(
                await eventually("nothing outstanding") { leader.collaborator("collab-1")?.outstandingRequests == 0 }
            )
            #expect(leader.state.withLockedValue { $0.dispatch.waitingCount } == 0)
            _ = try await leader.request(toAnyHandling: "work", body: ByteBuffer(), timeout: .seconds(5))
        }
    }

    @Test(
        "an idempotent request lost with its collaborator goes to another; a non-idempotent one fails and says it may have run"
    )
    func retries() async throws {
        try await withTestCluster { cluster in
            // collab-1 loses its connection in the handler; collab-2 answers.
            let entered = NIOLockedValueBox(0)
            _ = try await cluster.addCollaborator("collab-1") { collaborator in
                collaborator.onRequest(topic: "work") { _, context in
                    entered.withLockedValue { $0 += 1 }
                    context.session.channel.close(promise: nil)
                    try await Task.sleep(for: .seconds(30))
                    return ByteBuffer(string: "collab-1")
                }
            }
            _ = try await cluster.addCollaborator("collab-2") { collaborator in
                collaborator.onRequest(topic: "work") { _, _ in ByteBuffer(string: "collab-2") }
            }
            let leader = cluster.leader
            let firstSession = leader.collaborator("collab-1")?.sessionID
            // A key collab-1 owns, so that it is tried first.
            let key = try #require(
                (0..<1_000).map { "k\($0)" }.first {
                    DispatchSelection.weight(key: $0, nodeID: "collab-1")
                        > DispatchSelection.weight(key: $0, nodeID: "collab-2")
                }
            )
            let answer = try await leader.request(
                toAnyHandling: "work",
                body: ByteBuffer(),
                timeout: .seconds(10),
                options: DispatchOptions(affinity: .key(key), idempotent: true)
            )
            #expect(String(buffer: answer.body) == "collab-2")
            #expect(entered.withLockedValue { $0 } == 1, "it ran on collab-1 first")

            try await cluster.waitUntil("collab-1 back") {
                let record = leader.collaborator("collab-1")
                return record?.state == .active && record?.sessionID != firstSession
            }
            do {
                _ = try await leader.request(
                    toAnyHandling: "work",
                    body: ByteBuffer(),
                    timeout: .seconds(10),
                    options: DispatchOptions(affinity: .key(key))
                )
                Issue.record("a non-idempotent request was tried again")
            } catch let error as RequestError {
                #expect(error.code == .unavailable)
                #expect(error.mayHaveRun == true)
                #expect(error.message.contains("collab-1"))
                #expect(entered.withLockedValue { $0 } == 2, "lost mid-request, after its handler began")
            }
        }
    }
}
