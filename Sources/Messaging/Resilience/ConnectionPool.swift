public import CoreMetrics
public import Logging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix
public import ServiceLifecycle

/// Settings of a ``ConnectionPool``.
public struct ConnectionPoolConfiguration: Sendable, Hashable {
    /// Connections kept open even when idle: opened when ``ConnectionPool/run()`` starts, and
    /// opened again when one dies (if the server can be reached then).
    public var minimumConnections: Int = 0
    /// The most connections open at once.
    public var maximumConnections: Int = 8
    /// How long `withConnection` waits for a free connection before it fails.
    public var acquireTimeout: Duration = .seconds(10)

    public init() {}
}

/// A bounded set of client connections to one server, shared by many tasks.
///
/// Connections are opened lazily (in parallel, one per task that needs one, up to the maximum)
/// and handed out for the scope of ``withConnection(_:)``. A task that finds every connection
/// busy waits up to the acquire timeout, never forever. A connection that died (its heartbeat
/// timed out, the server closed it) is dropped and replaced.
///
/// A `Service`: connections are opened only while ``run()`` runs (a `withConnection` made
/// before it starts waits for it, within the acquire timeout). `run()` returns when its task is
/// cancelled, when its `ServiceGroup` shuts down gracefully, or after ``shutdown()``: each way
/// it stops handing out connections, waits for those in use to come back, and closes them all
/// (GOODBYE).
public final class ConnectionPool: Service, Sendable {
    /// A snapshot of the pool.
    public struct Statistics: Sendable, Hashable {
        public var inUse: Int
        public var idle: Int
        public var connecting: Int
        public var waiters: Int
        /// Connections found dead and dropped so far.
        public var replaced: Int
        /// Open or opening connections.
        public var total: Int { self.inUse + self.idle + self.connecting }
    }

    private enum Grant {
        case connection(SecureClient)
        /// A slot is free: open a new connection in it.
        case slot
    }

    private struct State {
        var idle: [SecureClient] = []
        var inUse = 0
        var connecting = 0
        var replaced = 0
        var waiters: [UInt64: CheckedContinuation<Grant, any Error>] = [:]
        var waiterOrder: [UInt64] = []
        var nextWaiter: UInt64 = 0
        var shuttingDown = false
        var phase = Phase.idle
        /// Waiting until nothing is in use or connecting (during shutdown).
        var drained: [CheckedContinuation<Void, Never>] = []
        /// Callers of `shutdown()` waiting for `run()` to return.
        var runEndWaiters: [CheckedContinuation<Void, Never>] = []
        /// Connections given back during shutdown, closed once all are back.
        var toClose: [SecureClient] = []
    }

    private enum Phase {
        case idle
        case running
        case ended
    }

    /// Work for `run()`'s task group.
    private enum Work {
        /// Watch a connection until it closes.
        case watch(SecureClient)
        /// Open a connection to keep the minimum.
        case open
    }

    private let connect: @Sendable () async throws -> SecureClient
    private let work: AsyncStream<Work>
    private let workContinuation: AsyncStream<Work>.Continuation
    private let configuration: ConnectionPoolConfiguration
    private let state = NIOLockedValueBox(State())
    private let logger: Logger
    private let gaugeInUse: Meter
    private let gaugeIdle: Meter
    private let gaugeWaiters: Meter
    private let replacedCounter: Counter

    public init(
        host: String,
        port: Int,
        transport: any MessagingTransport,
        serverHostname: String? = nil,
        clientConfiguration: ClientConfiguration,
        configuration: ConnectionPoolConfiguration = ConnectionPoolConfiguration(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        metricsFactory: any MetricsFactory = MetricsSystem.factory,
        logger: Logger = Logger.current
    ) {
        precondition(configuration.maximumConnections >= 1, "a pool needs room for one connection")
        precondition(configuration.minimumConnections <= configuration.maximumConnections)
        self.configuration = configuration
        self.logger = logger
        (self.work, self.workContinuation) = AsyncStream.makeStream()
        self.connect = {
            try await SecureClient.connect(
                host: host,
                port: port,
                transport: transport,
                serverHostname: serverHostname,
                configuration: clientConfiguration,
                group: group,
                logger: logger
            )
        }
        self.gaugeInUse = Meter(label: "smsg_pool_in_use", factory: metricsFactory)
        self.gaugeIdle = Meter(label: "smsg_pool_idle", factory: metricsFactory)
        self.gaugeWaiters = Meter(label: "smsg_pool_waiters", factory: metricsFactory)
        self.replacedCounter = Counter(label: "smsg_pool_replaced_total", factory: metricsFactory)
    }

    /// The pool now.
    public var statistics: Statistics {
        self.state.withLockedValue {
            Statistics(
                inUse: $0.inUse,
                idle: $0.idle.count,
                connecting: $0.connecting,
                waiters: $0.waiters.count,
                replaced: $0.replaced
            )
        }
    }

    // MARK: - Running

    /// Opens the minimum of connections, watches every connection (a dead one leaves the pool
    /// at once and, below the minimum, is replaced), and hands out connections, until the task
    /// is cancelled, the `ServiceGroup` shuts down gracefully, or ``shutdown()`` is called. Then
    /// it fails the callers waiting for a connection, waits until every connection in use is
    /// given back, closes them all (GOODBYE), and returns.
    ///
    /// - Throws: ``MessagingError`` with ``MessagingError/Code/alreadyRunning`` when called
    ///   while running or after it ran: a pool runs once.
    public func run() async throws {
        let (granted, missing): ([CheckedContinuation<Grant, any Error>], Int) = try self.state.withLockedValue {
            state in
            guard state.phase == .idle else { throw MessagingError(.alreadyRunning, "a pool runs once") }
            state.phase = .running
            // Callers that came before: each gets a slot to open a connection in.
            var granted: [CheckedContinuation<Grant, any Error>] = []
            while state.inUse + state.connecting < self.configuration.maximumConnections,
                let waiter = self.popWaiter(&state)
            {
                state.connecting += 1
                granted.append(waiter)
            }
            return (granted, self.missingForMinimum(&state))
        }
        for waiter in granted {
            self.gaugeWaiters.decrement()
            waiter.resume(returning: .slot)
        }
        self.requestOpens(missing)
        await withTaskCancellationOrGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                // Ends when shutdown begins (or the task is cancelled).
                for await work in self.work {
                    switch work {
                    case .watch(let client):
                        group.addTask {
                            await client.session.waitUntilClosed()
                            self.closed(client)
                        }
                    case .open:
                        group.addTask { await self.openIdle() }
                    }
                }
                self.beginShutdown()
                await self.drainAndClose()
            }
        } onCancelOrGracefulShutdown: {
            self.beginShutdown()
        }
        let waiters = self.state.withLockedValue { state in
            state.phase = .ended
            defer { state.runEndWaiters.removeAll() }
            return state.runEndWaiters
        }
        for waiter in waiters {
            waiter.resume()
        }
    }

    /// Runs `body` with a connection of the pool, then gives the connection back.
    ///
    /// - Throws: ``MessagingError`` with ``MessagingError/Code/acquireTimedOut`` when no
    ///   connection is free within the acquire timeout; the connect error when a new
    ///   connection cannot be opened; whatever `body` throws.
    public func withConnection<T: Sendable>(_ body: (SecureClient) async throws -> T) async throws -> T {
        let client = try await self.acquire()
        do {
            let result = try await body(client)
            self.release(client, from: .inUse)
            return result
        } catch {
            self.release(client, from: .inUse)
            throw error
        }
    }

    /// Stops handing out connections, fails the waiters, waits until every connection in use
    /// is given back, and closes all of them; returns once ``run()`` has returned (closes what
    /// there is at once when it never ran).
    public func shutdown() async {
        self.beginShutdown()
        let running = self.state.withLockedValue { $0.phase == .running }
        guard running else {
            await self.drainAndClose()
            return
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ended = self.state.withLockedValue { state in
                guard state.phase == .running else { return true }
                state.runEndWaiters.append(continuation)
                return false
            }
            if ended {
                continuation.resume()
            }
        }
    }

    /// Stops handing out connections and fails the waiters; `run()` then drains and closes.
    private func beginShutdown() {
        let waiters = self.state.withLockedValue { state in
            state.shuttingDown = true
            let waiters = state.waiterOrder.compactMap { state.waiters[$0] }
            state.waiters.removeAll()
            state.waiterOrder.removeAll()
            return waiters
        }
        for waiter in waiters {
            self.gaugeWaiters.decrement()
            waiter.resume(throwing: MessagingError(.shuttingDown, "the pool is shutting down"))
        }
        self.workContinuation.finish()
    }

    /// Closes the idle connections, waits until the rest are given back, and closes them.
    private func drainAndClose() async {
        let idle = self.state.withLockedValue { state in
            defer { state.idle.removeAll() }
            return state.idle
        }
        for _ in idle {
            self.gaugeIdle.decrement()
        }
        await Self.close(idle)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = self.state.withLockedValue { state -> Bool in
                if state.inUse == 0 && state.connecting == 0 { return true }
                state.drained.append(continuation)
                return false
            }
            if done {
                continuation.resume()
            }
        }
        let returned = self.state.withLockedValue { state in
            defer { state.toClose.removeAll() }
            return state.toClose
        }
        await Self.close(returned)
    }

    private static func close(_ clients: [SecureClient]) async {
        await withDiscardingTaskGroup { group in
            for client in clients {
                group.addTask { await client.close() }
            }
        }
    }

    /// How many connections to open to keep the minimum; counts them as connecting. The caller
    /// holds the lock.
    private func missingForMinimum(_ state: inout State) -> Int {
        guard state.phase == .running, !state.shuttingDown else { return 0 }
        let missing = max(
            0,
            self.configuration.minimumConnections - state.idle.count - state.inUse - state.connecting
        )
        state.connecting += missing
        return missing
    }

    /// Asks `run()` to open `count` connections, in slots already counted in `connecting`; a
    /// slot whose request comes after shutdown began is given back.
    private func requestOpens(_ count: Int) {
        for _ in 0..<count {
            if case .terminated = self.workContinuation.yield(.open) {
                self.freeSlot()
            }
        }
    }

    /// Opens a connection for the minimum, in a slot already counted in `connecting`.
    private func openIdle() async {
        do {
            let client = try await self.connect()
            self.workContinuation.yield(.watch(client))
            self.release(client, from: .connecting)
        } catch {
            self.logger.debug("a connection for the pool's minimum failed", metadata: ["error": "\(error)"])
            self.freeSlot()
        }
    }

    /// A watched connection closed: if it was idle, it leaves the idle list at once (and counts
    /// as replaced), so the next acquire does not find it; below the minimum, another opens.
    private func closed(_ client: SecureClient) {
        let (removed, missing) = self.state.withLockedValue { state -> (Bool, Int) in
            guard let index = state.idle.firstIndex(where: { $0 === client }) else { return (false, 0) }
            state.idle.remove(at: index)
            state.replaced += 1
            return (true, self.missingForMinimum(&state))
        }
        if removed {
            self.gaugeIdle.decrement()
            self.replacedCounter.increment()
        }
        self.requestOpens(missing)
    }

    // MARK: - Acquire and release

    private func acquire() async throws -> SecureClient {
        var dead: [SecureClient] = []
        let now = try self.state.withLockedValue { try self.grantNow(&$0, dead: &dead) }
        self.retire(dead)
        let grant: Grant
        if let now {
            grant = now
        } else {
            grant = try await self.waitForGrant()
        }
        switch grant {
        case .connection(let client):
            return client
        case .slot:
            return try await self.openNew()
        }
    }

    /// A connection or a slot to open one in, if there is one now (counted as in use or
    /// connecting); `nil`: the caller waits. Idle connections found dead are counted as
    /// replaced and handed to `dead`, for ``retire(_:)`` once the lock is released. The caller
    /// holds the lock.
    private func grantNow(_ state: inout State, dead: inout [SecureClient]) throws -> Grant? {
        if state.shuttingDown { throw MessagingError(.shuttingDown, "the pool is shutting down") }
        // Connections open only while `run()` runs: until then, everyone waits for it.
        guard state.phase == .running else { return nil }
        while let client = state.idle.popLast() {
            self.gaugeIdle.decrement()
            if client.session.currentState == .open {
                state.inUse += 1
                self.gaugeInUse.increment()
                return .connection(client)
            }
            state.replaced += 1
            self.replacedCounter.increment()
            dead.append(client)
        }
        if state.inUse + state.connecting < self.configuration.maximumConnections {
            state.connecting += 1
            return .slot
        }
        return nil
    }

    /// Opens a connection in a slot already counted in `connecting`.
    private func openNew() async throws -> SecureClient {
        do {
            let client = try await self.connect()
            self.workContinuation.yield(.watch(client))
            self.state.withLockedValue { state in
                state.connecting -= 1
                state.inUse += 1
            }
            self.gaugeInUse.increment()
            return client
        } catch {
            // The slot is free again: let a waiter try.
            self.freeSlot()
            throw error
        }
    }

    /// Finishes the close of connections found dead (closed or closing already), and opens
    /// others in their place where the pool is below its minimum.
    private func retire(_ dead: [SecureClient]) {
        guard !dead.isEmpty else { return }
        for client in dead {
            client.session.beginClose()
        }
        self.requestOpens(self.state.withLockedValue { self.missingForMinimum(&$0) })
    }

    /// A wait of one caller for a grant. Touched only under the pool's lock.
    private final class Ticket: @unchecked Sendable {
        /// Set once the caller is registered among the waiters.
        var key: UInt64?
        /// The timeout passed before the caller was registered.
        var expired = false
    }

    /// Waits for a connection or a slot, up to the acquire timeout. The decision to wait and
    /// the registration as a waiter are one step under the lock, so no grant, timeout or
    /// cancellation in between is lost.
    private func waitForGrant() async throws -> Grant {
        let timeout = self.configuration.acquireTimeout
        let ticket = Ticket()
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                if !Task.isCancelled {
                    self.expire(ticket, timeout: timeout)
                }
            }
            defer { group.cancelAll() }
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Grant, any Error>) in
                    var dead: [SecureClient] = []
                    let now: Result<Grant, any Error>? = self.state.withLockedValue { state in
                        if ticket.expired { return .failure(self.timeoutError(timeout, state: state)) }
                        if Task.isCancelled { return .failure(CancellationError()) }
                        do {
                            if let grant = try self.grantNow(&state, dead: &dead) { return .success(grant) }
                        } catch {
                            return .failure(error)
                        }
                        state.nextWaiter += 1
                        ticket.key = state.nextWaiter
                        state.waiters[state.nextWaiter] = continuation
                        state.waiterOrder.append(state.nextWaiter)
                        self.gaugeWaiters.increment()
                        return nil
                    }
                    self.retire(dead)
                    if let now {
                        continuation.resume(with: now)
                    }
                }
            } onCancel: {
                self.withdraw(ticket)?.resume(throwing: CancellationError())
            }
        }
    }

    private func timeoutError(_ timeout: Duration, state: State) -> MessagingError {
        MessagingError(
            .acquireTimedOut,
            state.phase == .running
                ? "no connection free within \(timeout)"
                : "the pool did not run within \(timeout): is its run() running?"
        )
    }

    /// The acquire timeout passed: fails the waiter, or, not registered yet, marks it.
    private func expire(_ ticket: Ticket, timeout: Duration) {
        let (waiter, error) = self.state.withLockedValue {
            state -> (CheckedContinuation<Grant, any Error>?, MessagingError) in
            let error = self.timeoutError(timeout, state: state)
            guard let key = ticket.key else {
                ticket.expired = true
                return (nil, error)
            }
            return (self.removeWaiter(key, &state), error)
        }
        if let waiter {
            self.gaugeWaiters.decrement()
            waiter.resume(throwing: error)
        }
    }

    /// Takes a cancelled caller out of the waiters (if registered and not granted yet).
    private func withdraw(_ ticket: Ticket) -> CheckedContinuation<Grant, any Error>? {
        let waiter = self.state.withLockedValue { state in
            ticket.key.flatMap { self.removeWaiter($0, &state) }
        }
        if waiter != nil {
            self.gaugeWaiters.decrement()
        }
        return waiter
    }

    /// The caller holds the lock.
    private func removeWaiter(_ key: UInt64, _ state: inout State) -> CheckedContinuation<Grant, any Error>? {
        guard let waiter = state.waiters.removeValue(forKey: key) else { return nil }
        state.waiterOrder.removeAll { $0 == key }
        return waiter
    }

    /// Takes the oldest waiter, if any. The caller holds the lock.
    private func popWaiter(_ state: inout State) -> CheckedContinuation<Grant, any Error>? {
        while !state.waiterOrder.isEmpty {
            let key = state.waiterOrder.removeFirst()
            if let waiter = state.waiters.removeValue(forKey: key) {
                return waiter
            }
        }
        return nil
    }

    private func freeSlot() {
        let waiter = self.state.withLockedValue { state -> CheckedContinuation<Grant, any Error>? in
            state.connecting -= 1
            if let waiter = self.popWaiter(&state) {
                state.connecting += 1
                return waiter
            }
            self.signalDrainedIfDone(&state)
            return nil
        }
        if let waiter {
            self.gaugeWaiters.decrement()
            waiter.resume(returning: .slot)
        }
    }

    private enum Origin {
        case inUse
        /// Just opened, in a slot counted in `connecting`.
        case connecting
    }

    /// Gives a connection back to a waiter or to the idle list, or, when it died or the pool is
    /// shutting down, closes it.
    private func release(_ client: SecureClient, from origin: Origin) {
        let alive = client.session.currentState == .open
        enum Outcome {
            case handed(CheckedContinuation<Grant, any Error>, Grant)
            case idle
            case kept
            case close(missing: Int)
        }
        let outcome: Outcome = self.state.withLockedValue { state in
            switch origin {
            case .inUse: state.inUse -= 1
            case .connecting: state.connecting -= 1
            }
            if !alive {
                state.replaced += 1
            }
            if state.shuttingDown {
                state.toClose.append(client)
                self.signalDrainedIfDone(&state)
                return .kept
            }
            if !alive {
                if let waiter = self.popWaiter(&state) {
                    // The dead connection's slot goes to a waiter, which opens a new one.
                    state.connecting += 1
                    return .handed(waiter, .slot)
                }
                return .close(missing: self.missingForMinimum(&state))
            }
            if let waiter = self.popWaiter(&state) {
                state.inUse += 1
                return .handed(waiter, .connection(client))
            }
            state.idle.append(client)
            return .idle
        }
        if origin == .inUse {
            self.gaugeInUse.decrement()
        }
        if !alive {
            self.replacedCounter.increment()
        }
        switch outcome {
        case .handed(let waiter, let grant):
            self.gaugeWaiters.decrement()
            if case .connection = grant {
                self.gaugeInUse.increment()
            }
            if !alive {
                client.session.beginClose()
            }
            waiter.resume(returning: grant)
        case .idle:
            self.gaugeIdle.increment()
        case .kept:
            break
        case .close(let missing):
            // Closed or closing already: this finishes what is left of its close.
            client.session.beginClose()
            self.requestOpens(missing)
        }
    }

    private func signalDrainedIfDone(_ state: inout State) {
        guard state.shuttingDown, state.inUse == 0, state.connecting == 0 else { return }
        let drained = state.drained
        state.drained.removeAll()
        for waiter in drained {
            waiter.resume()
        }
    }
}
