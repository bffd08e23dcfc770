public import SecureMessaging
import Synchronization

/// A wait in a ``TestCluster`` that ran out of time.
public struct TestClusterTimeout: Error, CustomStringConvertible {
    /// What was awaited.
    public var awaited: String
    /// How long it was awaited.
    public var timeout: Duration

    public var description: String { "timed out after \(self.timeout) waiting for \(self.awaited)" }
}

/// A leader and its collaborators in one process, for tests: mutual TLS with in-memory
/// certificates (``TestCertificates``), the leader on an ephemeral port on 127.0.0.1, short
/// heartbeats, and waits on membership events instead of sleeps.
///
/// ```swift
/// try await withTestCluster { cluster in
///     cluster.leader.onRequest(topic: "time") { _, _ in ByteBuffer(string: "noon") }
///     let worker = try await cluster.addCollaborator("worker-1") { collaborator in
///         collaborator.onRequest(topic: "echo") { message, _ in message.body }
///     }
///     let answer = try await worker.request(topic: "time", body: ByteBuffer())
/// }
/// ```
///
/// The cluster reads `Leader.events` itself: use ``events`` and ``waitForEvent(from:timeout:awaiting:where:)``
/// instead.
public final class TestCluster: Sendable {
    /// The leader, running.
    public let leader: Leader
    /// The authority every member's certificate comes from.
    public let certificates: TestCertificates
    /// The leader's port on 127.0.0.1.
    public let port: Int

    private struct Waiter {
        var predicate: @Sendable (MembershipEvent) -> Bool
        var continuation: CheckedContinuation<MembershipEvent, any Error>
    }

    private struct State {
        var events: [MembershipEvent] = []
        var waiters: [Int: Waiter] = [:]
        var nextWaiter = 0
        /// Waits begun and not yet over, registered or not.
        var pending: Set<Int> = []
        /// Failures (a timeout, a cancellation) that came before their waiter was registered.
        var earlyFailures: [Int: any Error] = [:]
        var collaborators: [(Collaborator, Task<Void, any Error>)] = []
    }

    private let state = Mutex(State())
    private let running: Task<Void, any Error>
    private let watching = Mutex<Task<Void, Never>?>(nil)
    private let logger: Logger

    /// Starts a leader.
    ///
    /// - Parameters:
    ///   - configuration: The leader's settings; its host and port are replaced by
    ///     127.0.0.1 and an ephemeral port.
    ///   - logger: Where the leader and collaborators log; nowhere by default.
    /// - Throws: `TLSError` if the certificates cannot be made, or the leader's error if it
    ///   cannot listen.
    public init(
        configuration: LeaderConfiguration = TestCluster.leaderConfiguration(),
        logger: Logger = .quiet
    )
        async throws
    {
        var configuration = configuration
        configuration.server.host = "127.0.0.1"
        configuration.server.port = 0
        self.certificates = try TestCertificates()
        self.logger = logger
        let leader = Leader(
            configuration: configuration,
            transport: try self.certificates.serverTransport(name: "leader"),
            logger: logger
        )
        self.leader = leader
        self.running = Task { try await leader.run() }
        do {
            self.port = try await leader.listeningAddress().port ?? 0
        } catch {
            leader.shutdown()
            _ = try? await self.running.value
            throw error
        }
        let watching = Task { [weak self] in
            for await event in leader.events {
                self?.record(event)
            }
        }
        self.watching.withLock { $0 = watching }
    }

    /// A leader configuration with test timings: heartbeats every 500 ms, a 1 s drain.
    public static func leaderConfiguration() -> LeaderConfiguration {
        var configuration = LeaderConfiguration()
        configuration.server.session.heartbeatInterval = .milliseconds(500)
        configuration.server.session.drainTimeout = .seconds(1)
        return configuration
    }

    /// A collaborator configuration with test timings: heartbeats every 500 ms, reconnection
    /// from 50 ms up to 1 s.
    ///
    /// - Parameter nodeID: The collaborator's node_id.
    /// - Returns: The configuration.
    public static func collaboratorConfiguration(nodeID: String) -> CollaboratorConfiguration {
        var configuration = CollaboratorConfiguration(nodeID: nodeID)
        configuration.session.heartbeatInterval = .milliseconds(500)
        configuration.session.drainTimeout = .seconds(1)
        configuration.reconnect = ReconnectPolicy(
            initialDelay: .milliseconds(50),
            multiplier: 2,
            maximumDelay: .seconds(1)
        )
        return configuration
    }

    /// Every membership event the leader reported, in order.
    public var events: [MembershipEvent] {
        self.state.withLock { $0.events }
    }

    /// Starts a collaborator with a certificate naming `nodeID`, and waits until the leader
    /// reports it joined.
    ///
    /// - Parameters:
    ///   - nodeID: Its node_id, also the identity in its certificate.
    ///   - configuration: Its settings; ``collaboratorConfiguration(nodeID:)`` by default.
    ///   - timeout: How long to wait for it to join.
    ///   - setUp: Registers its handlers before it connects.
    /// - Returns: The running collaborator.
    /// - Throws: ``TestClusterTimeout`` if it does not join in time.
    @discardableResult
    public func addCollaborator(
        _ nodeID: String,
        configuration: CollaboratorConfiguration? = nil,
        timeout: Duration = .seconds(10),
        setUp: (Collaborator) -> Void = { _ in }
    ) async throws -> Collaborator {
        let from = self.state.withLock { $0.events.count }
        let collaborator = Collaborator(
            leaderHost: "127.0.0.1",
            leaderPort: self.port,
            transport: try self.certificates.clientTransport(nodeID: nodeID),
            serverHostname: "localhost",
            configuration: configuration ?? Self.collaboratorConfiguration(nodeID: nodeID),
            logger: self.logger
        )
        setUp(collaborator)
        // How its run() ended, should it end before it joins (refused, for instance).
        let (ended, endedContinuation) = AsyncStream<(any Error)?>.makeStream()
        let running = Task {
            defer { endedContinuation.finish() }
            do {
                try await collaborator.run()
                endedContinuation.yield(nil)
            } catch {
                endedContinuation.yield(error)
                throw error
            }
        }
        self.state.withLock { $0.collaborators.append((collaborator, running)) }
        do {
            try await self.waitUntilJoined(nodeID, from: from, timeout: timeout, ended: ended)
        } catch {
            // Its failure is reported here, once: stop() neither waits for it nor throws it again.
            self.state.withLock { state in state.collaborators.removeAll { $0.0 === collaborator } }
            await collaborator.leave()
            _ = try? await running.value
            throw error
        }
        return collaborator
    }

    /// Waits for `nodeID`'s join, or for its run to end first (then throws how it ended).
    private func waitUntilJoined(
        _ nodeID: String,
        from: Int,
        timeout: Duration,
        ended: AsyncStream<(any Error)?>
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await self.waitForEvent(from: from, timeout: timeout, awaiting: "\(nodeID) to join") { event in
                    if case .joined(let record) = event { return record.nodeID == nodeID }
                    return false
                }
            }
            group.addTask {
                for await end in ended {
                    throw end ?? TestClusterTimeout(awaited: "\(nodeID) to join (it stopped first)", timeout: timeout)
                }
                // Only a cancelled wait gets here.
                try Task.checkCancellation()
            }
            defer { group.cancelAll() }
            try await group.next()
        }
    }

    /// The first membership event at index `from` or later (counting every event so far)
    /// that matches, waiting for it if it has not come yet.
    ///
    /// - Parameters:
    ///   - from: The index in ``events`` to search from; 0 searches every event so far.
    ///   - timeout: How long to wait.
    ///   - awaiting: What is awaited, for the timeout's message.
    ///   - predicate: Whether an event is the one.
    /// - Returns: The event.
    /// - Throws: ``TestClusterTimeout`` if none comes in time, `CancellationError` if the
    ///   waiting task is cancelled.
    @discardableResult
    public func waitForEvent(
        from: Int = 0,
        timeout: Duration = .seconds(10),
        awaiting: String = "a membership event",
        where predicate: @escaping @Sendable (MembershipEvent) -> Bool
    ) async throws -> MembershipEvent {
        let id = self.state.withLock { state in
            state.nextWaiter += 1
            state.pending.insert(state.nextWaiter)
            return state.nextWaiter
        }
        let timer = Task { [weak self] in
            do {
                try await Task.sleep(for: timeout)
            } catch {
                return  // The wait is over: cancelled.
            }
            self?.resume(id, with: .failure(TestClusterTimeout(awaited: awaiting, timeout: timeout)))
        }
        defer {
            timer.cancel()
            self.state.withLock { state in
                state.pending.remove(id)
                state.earlyFailures[id] = nil
                state.waiters[id] = nil
            }
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                // Registered first, then the events before it searched (outside the lock: the
                // predicate is the caller's code): an event recorded in between is seen by both,
                // and the first to resume wins.
                let (early, past) = self.state.withLock { state -> ((any Error)?, [MembershipEvent]) in
                    if let failure = state.earlyFailures.removeValue(forKey: id) { return (failure, []) }
                    state.waiters[id] = Waiter(predicate: predicate, continuation: continuation)
                    let start = min(max(from, 0), state.events.count)
                    return (nil, Array(state.events[start...]))
                }
                if let early {
                    continuation.resume(throwing: early)
                } else if let found = past.first(where: predicate) {
                    self.resume(id, with: .success(found))
                }
            }
        } onCancel: {
            self.resume(id, with: .failure(CancellationError()))
        }
    }

    /// Waits until `condition` holds, checking it now and after each membership event.
    ///
    /// - Parameters:
    ///   - awaiting: What is awaited, for the timeout's message.
    ///   - timeout: How long to wait.
    ///   - condition: What must hold, such as a collaborator's state in `Leader.collaborators`.
    /// - Throws: ``TestClusterTimeout`` if it does not hold in time.
    public func waitUntil(
        _ awaiting: String,
        timeout: Duration = .seconds(10),
        _ condition: @escaping @Sendable () -> Bool
    ) async throws {
        // The count first: an event that makes the condition hold just after the check is then
        // still searched.
        let from = self.events.count
        if condition() { return }
        try await self.waitForEvent(from: from, timeout: timeout, awaiting: awaiting) { _ in condition() }
    }

    /// Every collaborator says GOODBYE and stops, then the leader shuts down; waits for all
    /// of them.
    ///
    /// - Throws: The first error a collaborator's or the leader's `run()` ended with.
    public func stop() async throws {
        let collaborators = self.state.withLock { state in
            defer { state.collaborators.removeAll() }
            return state.collaborators
        }
        var firstError: (any Error)?
        for (collaborator, running) in collaborators {
            await collaborator.leave()
            do { try await running.value } catch { firstError = firstError ?? error }
        }
        self.leader.shutdown()
        do { try await self.running.value } catch { firstError = firstError ?? error }
        self.watching.withLock { $0?.cancel() }
        if let firstError { throw firstError }
    }

    /// Keeps `event` and ends the waits it matches. The predicates run outside the lock: they
    /// are the caller's code, and may read the cluster.
    private func record(_ event: MembershipEvent) {
        let waiters = self.state.withLock { state in
            state.events.append(event)
            return state.waiters
        }
        for (id, waiter) in waiters where waiter.predicate(event) {
            self.resume(id, with: .success(event))
        }
    }

    /// Ends wait `id` with `result` if it is registered; keeps a failure for a wait not yet
    /// registered; ignores a wait already over.
    private func resume(_ id: Int, with result: Result<MembershipEvent, any Error>) {
        let waiter = self.state.withLock { state -> Waiter? in
            if let waiter = state.waiters.removeValue(forKey: id) { return waiter }
            if case .failure(let error) = result, state.pending.contains(id), state.earlyFailures[id] == nil {
                state.earlyFailures[id] = error
            }
            return nil
        }
        waiter?.continuation.resume(with: result)
    }
}

/// Runs `body` with a ``TestCluster``, and stops the cluster afterwards whether `body`
/// returned or threw.
///
/// - Parameters:
///   - configuration: The leader's settings; see ``TestCluster/init(configuration:logger:)``.
///   - logger: Where the members log; nowhere by default.
///   - body: The test.
/// - Returns: What `body` returned.
/// - Throws: What `body` threw, else what stopping the cluster threw.
public func withTestCluster<T>(
    configuration: LeaderConfiguration = TestCluster.leaderConfiguration(),
    logger: Logger = .quiet,
    _ body: (TestCluster) async throws -> T
) async throws -> T {
    let cluster = try await TestCluster(configuration: configuration, logger: logger)
    let result: T
    do {
        result = try await body(cluster)
    } catch {
        try? await cluster.stop()
        throw error
    }
    try await cluster.stop()
    return result
}

extension Logger {
    /// A logger that drops everything.
    public static var quiet: Logger {
        Logger(label: "smsg.test", factory: { _ in SwiftLogNoOpLogHandler() })
    }
}
