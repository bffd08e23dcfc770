public import CoreMetrics
public import Logging
import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix

/// Settings of a ``ConnectionPool``.
public struct ConnectionPoolConfiguration: Sendable, Hashable {
    /// Connections kept open even when idle (opened by ``ConnectionPool/prewarm()`` and
    /// restored when one dies).
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
/// timed out, the server closed it) is dropped and replaced. ``shutdown()`` waits for the
/// connections in use to come back, then closes them all.
public final class ConnectionPool: Sendable {
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
        var drained: CheckedContinuation<Void, Never>?
        /// Connections given back during shutdown, closed once all are back.
        var toClose: [SecureClient] = []
    }

    private let connect: @Sendable () async throws -> SecureClient
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
        logger: Logger = Logger(label: "smsg.pool", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        precondition(configuration.maximumConnections >= 1, "a pool needs room for one connection")
        precondition(configuration.minimumConnections <= configuration.maximumConnections)
        self.configuration = configuration
        self.logger = logger
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

    /// Opens connections, in parallel, until the minimum is open.
    public func prewarm() async throws {
        let missing = self.state.withLockedValue { state -> Int in
            let missing = max(
                0,
                self.configuration.minimumConnections - state.idle.count - state.inUse - state.connecting
            )
            state.connecting += missing
            return missing
        }
        try await withThrowingTaskGroup(of: SecureClient?.self) { group in
            for _ in 0..<missing {
                group.addTask {
                    do {
                        let client = try await self.connect()
                        self.monitor(client)
                        return client
                    } catch {
                        self.state.withLockedValue { $0.connecting -= 1 }
                        throw error
                    }
                }
            }
            for try await client in group {
                if let client {
                    self.state.withLockedValue { $0.connecting -= 1 }
                    self.release(client, returning: false)
                }
            }
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
            self.release(client, returning: true)
            return result
        } catch {
            self.release(client, returning: true)
            throw error
        }
    }

    /// Stops handing out connections, fails the waiters, waits until every connection in use
    /// is given back, and closes all of them.
    public func shutdown() async {
        let (waiters, idle) = self.state.withLockedValue { state in
            state.shuttingDown = true
            let waiters = state.waiterOrder.compactMap { state.waiters[$0] }
            state.waiters.removeAll()
            state.waiterOrder.removeAll()
            let idle = state.idle
            state.idle.removeAll()
            return (waiters, idle)
        }
        for waiter in waiters {
            waiter.resume(throwing: MessagingError(.shuttingDown, "the pool is shutting down"))
        }
        for client in idle {
            self.gaugeIdle.decrement()
            await client.close()
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = self.state.withLockedValue { state -> Bool in
                if state.inUse == 0 && state.connecting == 0 { return true }
                state.drained = continuation
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
        for client in returned {
            await client.close()
        }
    }

    // MARK: - Acquire and release

    private func acquire() async throws -> SecureClient {
        enum Step {
            case use(SecureClient)
            case open
            case wait(UInt64)
        }
        var dead: [SecureClient] = []
        let step: Step = try self.state.withLockedValue { state in
            if state.shuttingDown { throw MessagingError(.shuttingDown, "the pool is shutting down") }
            while let client = state.idle.popLast() {
                self.gaugeIdle.decrement()
                if client.session.currentState == .open {
                    state.inUse += 1
                    self.gaugeInUse.increment()
                    return .use(client)
                }
                state.replaced += 1
                dead.append(client)
            }
            if state.inUse + state.connecting < self.configuration.maximumConnections {
                state.connecting += 1
                return .open
            }
            state.nextWaiter += 1
            return .wait(state.nextWaiter)
        }
        for client in dead {
            self.replacedCounter.increment()
            Task { await client.close() }
        }
        switch step {
        case .use(let client):
            return client
        case .open:
            return try await self.openNew()
        case .wait(let key):
            switch try await self.waitForGrant(key: key) {
            case .connection(let client):
                return client
            case .slot:
                return try await self.openNew()
            }
        }
    }

    /// Watches a connection: if it dies while idle, it leaves the idle list at once (and
    /// counts as replaced), so the next acquire does not find it.
    private func monitor(_ client: SecureClient) {
        Task { [weak self] in
            await client.session.waitUntilClosed()
            guard let self else { return }
            let removed = self.state.withLockedValue { state -> Bool in
                guard let index = state.idle.firstIndex(where: { $0 === client }) else { return false }
                state.idle.remove(at: index)
                state.replaced += 1
                return true
            }
            if removed {
                self.gaugeIdle.decrement()
                self.replacedCounter.increment()
            }
        }
    }

    /// Opens a connection in a slot already counted in `connecting`.
    private func openNew() async throws -> SecureClient {
        do {
            let client = try await self.connect()
            self.monitor(client)
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

    private func waitForGrant(key: UInt64) async throws -> Grant {
        let timeout = self.configuration.acquireTimeout
        let timer = Task {
            try await Task.sleep(for: timeout)
            let waiter = self.removeWaiter(key)
            waiter?.resume(throwing: MessagingError(.acquireTimedOut, "no connection free within \(timeout)"))
        }
        defer { timer.cancel() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Grant, any Error>) in
                let shuttingDown = self.state.withLockedValue { state -> Bool in
                    if state.shuttingDown { return true }
                    state.waiters[key] = continuation
                    state.waiterOrder.append(key)
                    return false
                }
                if shuttingDown {
                    continuation.resume(throwing: MessagingError(.shuttingDown, "the pool is shutting down"))
                } else {
                    self.gaugeWaiters.increment()
                }
            }
        } onCancel: {
            self.removeWaiter(key)?.resume(throwing: CancellationError())
        }
    }

    private func removeWaiter(_ key: UInt64) -> CheckedContinuation<Grant, any Error>? {
        let waiter = self.state.withLockedValue { state -> CheckedContinuation<Grant, any Error>? in
            guard let waiter = state.waiters.removeValue(forKey: key) else { return nil }
            state.waiterOrder.removeAll { $0 == key }
            return waiter
        }
        if waiter != nil {
            self.gaugeWaiters.decrement()
        }
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

    /// Gives a connection back (`returning`: it was in use): to a waiter, to the idle list, or,
    /// when it died or the pool is shutting down, closed.
    private func release(_ client: SecureClient, returning: Bool) {
        let alive = client.session.currentState == .open
        enum Outcome {
            case handed(CheckedContinuation<Grant, any Error>, Grant)
            case kept
            case close
        }
        let outcome: Outcome = self.state.withLockedValue { state in
            if returning {
                state.inUse -= 1
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
                return .close
            }
            if let waiter = self.popWaiter(&state) {
                state.inUse += 1
                return .handed(waiter, .connection(client))
            }
            state.idle.append(client)
            return .kept
        }
        if returning {
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
                Task { await client.close() }
            }
            waiter.resume(returning: grant)
        case .kept:
            if alive, !self.state.withLockedValue({ $0.shuttingDown }) {
                self.gaugeIdle.increment()
            }
        case .close:
            Task { await client.close() }
        }
    }

    private func signalDrainedIfDone(_ state: inout State) {
        if state.shuttingDown, state.inUse == 0, state.connecting == 0, let drained = state.drained {
            state.drained = nil
            drained.resume()
        }
    }
}
