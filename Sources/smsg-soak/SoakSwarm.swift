import ArgumentParser
import Cluster
import Foundation
import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SecureTransport
import ToolSupport

/// `smsg-soak soak-swarm`: the collaborators of one process of `smsg-soak soak`.
///
/// Each slot runs one collaborator after another under the slot's node_id. Each one (an
/// "instance", named at random) sends numbered messages with `sendAcknowledged`, one at a time,
/// and writes `ack INSTANCE SEQ` on stdout for every ACK; now and then its connection is cut;
/// after a random lifetime it leaves with GOODBYE or vanishes without one, and the slot starts
/// the next instance. When stdin ends the swarm stops: every collaborator leaves gracefully.
struct SoakSwarm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak-swarm",
        abstract: "Collaborators of one soak process (started by smsg-soak soak).",
        shouldDisplay: false
    )

    @Option(help: "The leader's port on 127.0.0.1.")
    var port: Int

    @Option(help: "The number of the first node (node_ids are soak-N).")
    var first: Int

    @Option(help: "How many collaborators.")
    var count: Int

    @Option(help: "Directory with ca.pem.")
    var certs: String

    @Option(help: "Directory with soak-N.pem and soak-N.key.")
    var collaboratorCerts: String

    @Option(help: "Seed of the random choices.")
    var seed: UInt64

    @Option(help: "Heartbeat interval in milliseconds.")
    var heartbeatMilliseconds: Int64 = 1000

    func run() async throws {
        let swarm = SwarmState()
        // The orchestrator closes stdin to stop the swarm (and stdin ends if it dies).
        Task {
            await waitForEndOfInput()
            swarm.stop()
        }
        let transports = try (0..<self.count).map { offset in
            let name = "soak-\(self.first + offset)"
            return try TLSTransport(
                configuration: .makeClientConfiguration(
                    certificateChain: .file("\(self.collaboratorCerts)/\(name).pem"),
                    privateKey: .file("\(self.collaboratorCerts)/\(name).key"),
                    trustRoots: .file("\(self.certs)/ca.pem")
                )
            )
        }
        // Each slot's generator is seeded from this one (not with seed + offset, whose SplitMix
        // streams would overlap, one slot repeating another's numbers one step later).
        var seeds = SplitMix64(seed: self.seed)
        let slotSeeds = (0..<self.count).map { _ in seeds.next() }
        await withTaskGroup(of: Void.self) { group in
            for offset in 0..<self.count {
                let slot = SwarmSlot(
                    nodeID: "soak-\(self.first + offset)",
                    port: self.port,
                    transport: transports[offset],
                    heartbeat: .milliseconds(self.heartbeatMilliseconds),
                    swarm: swarm,
                    random: SplitMix64(seed: slotSeeds[offset])
                )
                group.addTask { await slot.run() }
            }
        }
        swarm.output.flush()
    }
}

/// What the slots of one swarm share: the stop flag, the collaborators now running, stdout.
final class SwarmState: Sendable {
    let output = LineWriter()
    private let state = NIOLockedValueBox<(stopping: Bool, running: [String: Collaborator])>((false, [:]))

    var stopping: Bool { self.state.withLockedValue { $0.stopping } }

    /// Registers a collaborator that is starting; false (and nothing registered) when stopping.
    func register(_ collaborator: Collaborator) -> Bool {
        self.state.withLockedValue { state in
            guard !state.stopping else { return false }
            state.running[collaborator.configuration.nodeID] = collaborator
            return true
        }
    }

    func unregister(_ nodeID: String) {
        _ = self.state.withLockedValue { $0.running.removeValue(forKey: nodeID) }
    }

    /// Stops every slot: the collaborators running now leave (their waits for ACKs fail).
    func stop() {
        let running = self.state.withLockedValue { state in
            state.stopping = true
            return Array(state.running.values)
        }
        for collaborator in running {
            Task { await collaborator.leave() }
        }
    }
}

/// One node_id of a swarm: its collaborators, one instance after another.
struct SwarmSlot: Sendable {
    let nodeID: String
    let port: Int
    let transport: TLSTransport
    let heartbeat: Duration
    let swarm: SwarmState
    let random: SplitMix64

    func run() async {
        var random = self.random
        // Joins are spread over the first seconds, as a fleet starting would be.
        try? await Task.sleep(for: .milliseconds(Int.random(in: 0...3000, using: &random)))
        while !self.swarm.stopping {
            await self.runInstance(random: &random)
            try? await Task.sleep(for: .milliseconds(Int.random(in: 200...2000, using: &random)))
        }
    }

    private func runInstance(random: inout SplitMix64) async {
        // Unique per node, and across restarts of the swarm.
        let instance = "\(self.nodeID).\(String(random.next(), radix: 36))"
        var settings = CollaboratorConfiguration(nodeID: self.nodeID, status: "soaking")
        settings.session.heartbeatInterval = self.heartbeat
        settings.session.drainTimeout = .seconds(2)
        settings.reconnect = ReconnectPolicy(initialDelay: .milliseconds(100), multiplier: 2, maximumDelay: .seconds(1))
        let collaborator = Collaborator(
            leaderHost: "127.0.0.1",
            leaderPort: self.port,
            transport: self.transport,
            serverHostname: "localhost",
            configuration: settings
        )
        collaborator.onRequest(topic: "echo") { message, _ in message.body }
        collaborator.on(topic: "tick") { _, _ in }
        guard self.swarm.register(collaborator) else {
            await collaborator.leave()
            return
        }
        let running = Task { try await collaborator.run() }
        let lifetime = Duration.milliseconds(Int.random(in: 5_000...60_000, using: &random))
        let end = ContinuousClock.now + lifetime
        var sequence: UInt64 = 0
        while ContinuousClock.now < end, !self.swarm.stopping {
            sequence += 1
            do {
                try await collaborator.sendAcknowledged(
                    topic: "soak",
                    body: ByteBuffer(string: "\(instance) \(sequence)")
                )
            } catch {
                break  // Left (the swarm is stopping).
            }
            self.swarm.output.line("ack \(instance) \(sequence)")
            if Int.random(in: 0..<200, using: &random) == 0 {
                // The connection is cut: the collaborator reconnects and repeats what is unACKed.
                try? await collaborator.session?.channel.close()
            }
            try? await Task.sleep(for: .milliseconds(Int.random(in: 20...400, using: &random)))
        }
        if !self.swarm.stopping, Bool.random(using: &random) {
            // Vanishes: the connection closes without GOODBYE, as if the process had died.
            try? await collaborator.session?.channel.close()
        }
        await collaborator.leave()
        _ = try? await running.value
        self.swarm.unregister(self.nodeID)
    }
}

/// Lines to stdout, written in batches (at most 50 ms late) so that thousands of ACKs a
/// second cost few writes. Lines not yet written when the process is killed are lost, which
/// only makes the soak's check of acknowledged messages weaker, never wrong.
final class LineWriter: Sendable {
    private let pending = NIOLockedValueBox<(text: String, scheduled: Bool)>(("", false))

    func line(_ text: String) {
        let schedule = self.pending.withLockedValue { pending in
            pending.text += text + "\n"
            defer { pending.scheduled = true }
            return !pending.scheduled
        }
        if schedule {
            Task {
                try? await Task.sleep(for: .milliseconds(50))
                self.flush()
            }
        }
    }

    func flush() {
        let text = self.pending.withLockedValue { pending in
            defer { pending = ("", false) }
            return pending.text
        }
        if !text.isEmpty {
            FileHandle.standardOutput.write(Data(text.utf8))
        }
    }
}

/// A small seeded generator (SplitMix64), so that a soak's choices can be repeated by seed.
struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) {
        self.state = seed
    }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `smsg-soak soak-leader`: the leader of `smsg-soak soak`, in a process of its own so that
/// its descriptors and memory are measured alone.
///
/// Writes `port N` once listening, `recv INSTANCE SEQ` for every message its handler gets,
/// `state SESSIONS ACTIVE RECORDS` every 500 ms, and `requests ANSWERED WRONG FAILED` at the
/// end. Broadcasts every second and sends a request to a collaborator picked at random twice
/// a second. Shuts down (GOODBYE to everyone) when stdin ends.
struct SoakLeader: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak-leader",
        abstract: "The leader of a soak (started by smsg-soak soak).",
        shouldDisplay: false
    )

    @Option(help: "Directory with ca.pem, leader.pem and leader.key.")
    var certs: String

    @Option(help: "Seed of the random choices.")
    var seed: UInt64

    @Option(help: "Heartbeat interval in milliseconds.")
    var heartbeatMilliseconds: Int64 = 1000

    func run() async throws {
        let output = LineWriter()
        var configuration = LeaderConfiguration(host: "127.0.0.1", port: 0)
        configuration.server.session.heartbeatInterval = .milliseconds(self.heartbeatMilliseconds)
        configuration.server.session.drainTimeout = .seconds(2)
        configuration.goneRetention = .seconds(5)
        let leader = Leader(
            configuration: configuration,
            transport: try TLSTransport(
                configuration: .makeMutualTLSServerConfiguration(
                    certificateChain: .file("\(self.certs)/leader.pem"),
                    privateKey: .file("\(self.certs)/leader.key"),
                    trustRoots: .file("\(self.certs)/ca.pem")
                )
            ),
            logger: Logger(label: "securemsg.soak", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        leader.on(topic: "soak") { message, _ in
            output.line("recv \(String(buffer: message.body))")
        }
        let leading = Task { try await leader.run() }
        // Membership changes are taken, as an application would (the stream keeps at most
        // 10,000 of them for a reader that does not).
        let events = Task {
            for await _ in leader.events {}
        }
        output.line("port \(try await leader.listeningAddress().port!)")
        let stop = NIOLockedValueBox(false)
        Task {
            await waitForEndOfInput()
            stop.withLockedValue { $0 = true }
        }

        var random = SplitMix64(seed: self.seed)
        var requests = (answered: 0, wrong: 0, failed: 0)
        var tick = 0
        while !stop.withLockedValue({ $0 }) {
            try await Task.sleep(for: .milliseconds(500))
            tick += 1
            let records = leader.collaborators
            let active = records.filter { $0.state == .active }
            output.line("state \(leader.sessionCount) \(active.count) \(records.count)")
            if tick.isMultiple(of: 2) {
                leader.broadcast(topic: "tick", body: ByteBuffer(string: "\(tick)"))
            }
            guard let target = active.randomElement(using: &random) else { continue }
            let body = "\(random.next())"
            do {
                let reply = try await leader.request(
                    to: target.nodeID,
                    topic: "echo",
                    body: ByteBuffer(string: body),
                    timeout: .seconds(2)
                )
                if String(buffer: reply.body) == body { requests.answered += 1 } else { requests.wrong += 1 }
            } catch {
                // The collaborator left, vanished or was killed meanwhile: expected in a soak.
                requests.failed += 1
            }
        }
        output.line("requests \(requests.answered) \(requests.wrong) \(requests.failed)")
        leader.shutdown()
        try await leading.value
        await events.value
        output.flush()
    }
}
