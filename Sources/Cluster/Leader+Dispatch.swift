import CoreMetrics
import Logging
public import Messaging
import NIOConcurrencyHelpers
public import NIOCore

/// How a ``Leader`` spreads requests over the collaborators that handle their topic.
public struct DispatchConfiguration: Sendable, Hashable {
    /// The most dispatched requests that may wait at once for a collaborator with room; beyond,
    /// a request fails at once with RESOURCE_EXHAUSTED.
    public var maximumWaiting = 10_000
    /// The requests a collaborator is given at once when it announced no capacity (an older
    /// collaborator, or one that does not announce its interest).
    public var defaultCapacity = 64

    public init() {}
}

/// How one request is dispatched (``Leader/request(toAnyHandling:headers:body:timeout:options:)``).
public struct DispatchOptions: Sendable {
    /// Which collaborator a request goes to.
    public enum Affinity: Sendable, Hashable {
        /// The one with the fewest outstanding requests for its capacity, in steps of an
        /// eighth of it (ties: a clearly shorter round trip, then in turn). A collaborator whose recent answers take more
        /// than twice the median of the others' counts (1 + outstanding / capacity) times that
        /// ratio, its expected answer time: one ten times slower is chosen only when the others
        /// are nearly full.
        case leastOutstanding
        /// Always the same one for the same key while it stays eligible (rendezvous hashing
        /// over the eligible collaborators): a join or a leave moves only the keys of the
        /// collaborator that came or went. A request waits for that collaborator's room.
        case key(String)
    }

    /// Which collaborator a request goes to; least outstanding by default.
    public var affinity: Affinity
    /// Whether the request may run more than once. Only an idempotent request is tried again,
    /// on another collaborator within the same deadline, when the chosen one is lost before
    /// answering or answers UNAVAILABLE, RESOURCE_EXHAUSTED or NO_HANDLER.
    public var idempotent: Bool
    /// The most collaborators an idempotent request is tried on (1 or more).
    public var maximumAttempts: Int
    /// Whether collaborators that announced no interest (older ones) are eligible too; they are
    /// not by default, since nothing says they handle the topic.
    public var includesUnannounced: Bool
    /// Which records are eligible, besides being active and handling the topic: a test of
    /// status, role or metadata. It runs under the leader's lock: keep it quick, and do not
    /// call the leader from it.
    public var eligible: (@Sendable (CollaboratorRecord) -> Bool)?

    public init(
        affinity: Affinity = .leastOutstanding,
        idempotent: Bool = false,
        maximumAttempts: Int = 3,
        includesUnannounced: Bool = false,
        eligible: (@Sendable (CollaboratorRecord) -> Bool)? = nil
    ) {
        precondition(maximumAttempts >= 1, "a request is tried at least once")
        self.affinity = affinity
        self.idempotent = idempotent
        self.maximumAttempts = maximumAttempts
        self.includesUnannounced = includesUnannounced
        self.eligible = eligible
    }
}

/// The choice of one collaborator among the records, as a pure function of them.
struct DispatchSelection {
    enum Choice: Equatable {
        case chosen(String)
        /// Eligible collaborators exist, and all are at capacity (or the key's is).
        case busy
        /// No collaborator is eligible.
        case none
    }

    var topic: String
    var options: DispatchOptions
    var excluded: Set<String>
    var defaultCapacity: Int

    func isEligible(_ record: CollaboratorRecord) -> Bool {
        guard record.state == .active, !self.excluded.contains(record.nodeID) else { return false }
        if let interest = record.interest {
            guard interest.handlesRequests(on: self.topic) else { return false }
        } else if !self.options.includesUnannounced {
            return false
        }
        return self.options.eligible?(record) ?? true
    }

    func capacity(of record: CollaboratorRecord) -> Int {
        record.interest?.capacity ?? self.defaultCapacity
    }

    /// Chooses among `records` (the connected ones); `turn` rotates the order of ties;
    /// `answerTimes` holds each collaborator's recent answer time, where known.
    func choose(among records: [CollaboratorRecord], turn: Int, answerTimes: [String: Duration] = [:]) -> Choice {
        let eligible = records.filter(self.isEligible).sorted { $0.nodeID < $1.nodeID }
        guard !eligible.isEmpty else { return .none }
        switch self.options.affinity {
        case .key(let key):
            let owner = eligible.max {
                Self.weight(key: key, nodeID: $0.nodeID) < Self.weight(key: key, nodeID: $1.nodeID)
            }!
            return owner.outstandingRequests < self.capacity(of: owner) ? .chosen(owner.nodeID) : .busy
        case .leastOutstanding:
            let slowness = Self.slowness(of: eligible.map(\.nodeID), answerTimes: answerTimes)
            var best: (record: CollaboratorRecord, load: Double)?
            for offset in eligible.indices {
                let record = eligible[(offset + turn) % eligible.count]
                guard record.outstandingRequests < self.capacity(of: record) else { continue }
                let load =
                    (1 + Self.loadStep(record.outstandingRequests, capacity: self.capacity(of: record)))
                    * slowness[record.nodeID, default: 1]
                if let current = best, !Self.isBetter(record, load, than: current.record, current.load) { continue }
                best = (record, load)
            }
            return best.map { .chosen($0.record.nodeID) } ?? .busy
        }
    }

    /// Outstanding requests over capacity, in eighths (rounded down): loads closer than an
    /// eighth of capacity are equal, so members that answer alike take turns instead of
    /// chasing each other's momentary counts.
    static func loadStep(_ outstanding: Int, capacity: Int) -> Double {
        Double(8 * outstanding / capacity) / 8
    }

    /// Lower load: the expected answer time, as its slowness times one plus its load step
    /// (for members that answer alike, least outstanding for its capacity); at equal load, a
    /// clearly shorter PING round trip (by more than a fifth and a millisecond); otherwise not
    /// better (the turn decides).
    private static func isBetter(
        _ record: CollaboratorRecord,
        _ load: Double,
        than other: CollaboratorRecord,
        _ otherLoad: Double
    ) -> Bool {
        if load != otherLoad { return load < otherLoad }
        guard let roundTrip = record.roundTrip, let otherRoundTrip = other.roundTrip else { return false }
        return roundTrip + .milliseconds(1) < otherRoundTrip && roundTrip * 5 < otherRoundTrip * 4
    }

    /// How much slower than its peers each collaborator answers, as a factor of its load: its
    /// recent answer time over the median of the others' when that is more than twice, else 1
    /// — so equal members share evenly, and one that answers ten times slower is chosen only
    /// when the others are nearly full.
    static func slowness(of nodeIDs: [String], answerTimes: [String: Duration]) -> [String: Double] {
        let known = nodeIDs.compactMap { nodeID in answerTimes[nodeID].map { (nodeID, $0) } }.sorted { $0.1 < $1.1 }
        guard known.count >= 2 else { return [:] }
        // Without the member at `position`, the median of the rest (of count - 1) sits at
        // `middle` of them: one further on in the full list when it is at or after it.
        let middle = (known.count - 1) / 2
        var slowness: [String: Double] = [:]
        for (position, (nodeID, time)) in known.enumerated() {
            let othersMedian = known[position <= middle ? middle + 1 : middle].1
            guard othersMedian > .zero else { continue }
            let factor = time / othersMedian
            if factor > 2 {
                slowness[nodeID] = factor
            }
        }
        return slowness
    }

    /// The rendezvous weight of `nodeID` for `key`: FNV-1a over both, then a 64-bit mix, the
    /// same in every process.
    static func weight(key: String, nodeID: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        hash = (hash ^ 0xff) &* 0x0000_0100_0000_01b3
        for byte in nodeID.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        hash ^= hash >> 30
        hash = hash &* 0xbf58_476d_1ce4_e5b9
        hash ^= hash >> 27
        hash = hash &* 0x94d0_49bb_1331_11eb
        return hash ^ (hash >> 31)
    }
}

/// Dispatched requests waiting for a collaborator with room, first come first served.
struct DispatchState {
    struct Waiter {
        var selection: DispatchSelection
        var continuation: CheckedContinuation<String, any Error>
    }

    /// A wait, from the moment it is decided until it ends.
    enum Ticket {
        /// Decided, not yet in the queue.
        case pending
        case waiting(Waiter)
        /// Its deadline passed before it got into the queue.
        case expired
    }

    var waiters: [UInt64: Ticket] = [:]
    /// The waiters in the queue now (`order` may still hold the ids of some that left).
    var waitingCount = 0
    /// Waiter ids in arrival order (ids of waiters gone meanwhile are skipped).
    var order: [UInt64] = []
    var nextID: UInt64 = 0
    /// Rotates the order in which equally loaded collaborators are tried.
    var turn = 0
    /// Each collaborator's recent answer time (an average weighted to the latest), and when it
    /// last answered.
    var answerTimes: [String: (average: Duration, at: ContinuousClock.Instant)] = [:]

    /// How long an answer time counts: one that old is forgotten, so a collaborator that
    /// was slow gets requests again and shows how it answers now.
    static let answerTimeMemory = Duration.seconds(5)

    /// Takes an answer time of `nodeID` into its average.
    mutating func answered(_ nodeID: String, after time: Duration, at now: ContinuousClock.Instant) {
        if let (average, at) = self.answerTimes[nodeID], now - at < Self.answerTimeMemory {
            self.answerTimes[nodeID] = (average * 0.8 + time * 0.2, now)
        } else {
            self.answerTimes[nodeID] = (time, now)
        }
    }

    /// Puts a waiter at the end of the queue.
    mutating func enqueue(_ id: UInt64, _ waiter: Waiter) {
        self.waiters[id] = .waiting(waiter)
        self.order.append(id)
        self.waitingCount += 1
    }

    /// Takes waiter `id` out of the queue, if it is in it.
    mutating func takeWaiter(_ id: UInt64) -> Waiter? {
        guard case .waiting(let waiter)? = self.waiters[id] else { return nil }
        self.waiters[id] = nil
        self.waitingCount -= 1
        if self.order.count > 2 * self.waitingCount + 64 {
            // Many left without being served: drop their ids.
            let waiters = self.waiters
            self.order.removeAll { id in
                guard case .waiting? = waiters[id] else { return true }
                return false
            }
        }
        return waiter
    }

    /// Forgets what was learnt of `nodeID` (its record is gone).
    mutating func forget(_ nodeID: String) {
        self.answerTimes[nodeID] = nil
    }

    /// The answer times recent enough to count at `now`.
    func recentAnswerTimes(at now: ContinuousClock.Instant) -> [String: Duration] {
        var recent: [String: Duration] = [:]
        for (nodeID, (average, at)) in self.answerTimes where now - at < Self.answerTimeMemory {
            recent[nodeID] = average
        }
        return recent
    }
}

/// The dispatch's own metrics.
struct DispatchMetrics: Sendable {
    let retries: Counter
    let waiting: Meter

    init(factory: any MetricsFactory) {
        self.retries = Counter(label: "smsg_dispatch_retries_total", factory: factory)
        self.waiting = Meter(label: "smsg_dispatch_waiting", factory: factory)
    }
}

extension Leader {
    // MARK: - Dispatch

    /// Sends a REQUEST to one of the collaborators that handle `topic` and waits for its
    /// RESPONSE: the one with the fewest outstanding requests for its announced capacity by
    /// default, or the one that owns a key (``DispatchOptions/Affinity/key(_:)``).
    ///
    /// Eligible: connected and active (not suspect), handling REQUESTs on `topic` as announced
    /// (``CollaboratorRecord/interest``), and passing ``DispatchOptions/eligible``. When every
    /// eligible collaborator is at capacity the request waits, first come first served, in a
    /// queue bounded by ``DispatchConfiguration/maximumWaiting``, until one has room or its
    /// deadline passes. An idempotent request (``DispatchOptions/idempotent``) whose
    /// collaborator is lost, or answers UNAVAILABLE, RESOURCE_EXHAUSTED or NO_HANDLER, is tried
    /// on another within the same deadline. Each attempt runs in a client span naming the
    /// collaborator chosen, and is logged at debug with it.
    ///
    /// - Parameters:
    ///   - topic: the topic of the request, and which collaborators may take it.
    ///   - headers: sent where the collaborator has the `headers` extension, with the trace
    ///     context.
    ///   - body: the request's body.
    ///   - timeout: covers the whole request, waiting and attempts included; by default the
    ///     session's `requestTimeout`.
    ///   - options: affinity, idempotence and eligibility.
    /// - Throws: `RequestError`: the collaborator's code when it did not serve it;
    ///   `unavailable` when no collaborator is eligible, or (not idempotent) the one chosen was
    ///   lost before answering — `RequestError.mayHaveRun` says whether it may have run;
    ///   `resourceExhausted` when the queue is full, or no collaborator had room before the
    ///   deadline; `deadlineExceeded` when the answer did not come in time; `cancelled` when
    ///   the calling task is.
    public func request(
        toAnyHandling topic: String,
        headers: MessageHeaders = MessageHeaders(),
        body: ByteBuffer,
        timeout: Duration? = nil,
        options: DispatchOptions = DispatchOptions()
    ) async throws -> Message {
        try await self.router.made(topic: topic) {
            try await self.dispatch(topic: topic, headers: headers, body: body, timeout: timeout, options: options)
        }
    }

    /// Sends a REQUEST carrying `value` to one of the collaborators that handle `topic` and
    /// decodes its answer, both through ``coder``; see
    /// ``request(toAnyHandling:headers:body:timeout:options:)``.
    public func request<Response: Decodable>(
        toAnyHandling topic: String,
        headers: MessageHeaders = MessageHeaders(),
        value: some Encodable,
        as type: Response.Type = Response.self,
        timeout: Duration? = nil,
        options: DispatchOptions = DispatchOptions()
    ) async throws -> Response {
        try await self.router.made(topic: topic) {
            let body = try self.coder.requestBody(value)
            let answer = try await self.dispatch(
                topic: topic,
                headers: headers,
                body: body,
                timeout: timeout,
                options: options
            )
            return try self.coder.answer(type, of: answer)
        }
    }

    private func dispatch(
        topic: String,
        headers: MessageHeaders,
        body: ByteBuffer,
        timeout: Duration?,
        options: DispatchOptions
    ) async throws -> Message {
        try TopicInterest.refuseReserved(topic)
        try self.requireServing()
        let deadline = ContinuousClock.now + (timeout ?? self.configuration.server.session.requestTimeout)
        var selection = DispatchSelection(
            topic: topic,
            options: options,
            excluded: [],
            defaultCapacity: self.configuration.dispatch.defaultCapacity
        )
        var attempt = 0
        var lastFailure: RequestError?
        while true {
            attempt += 1
            let nodeID: String
            do {
                nodeID = try await self.collaborator(for: selection, deadline: deadline)
            } catch let error as RequestError where error.code == .unavailable && lastFailure != nil {
                // Nobody left to try: the last answer says what happened.
                throw lastFailure!
            }
            do {
                return try await self.attempt(
                    topic: topic,
                    to: nodeID,
                    attempt: attempt,
                    headers: headers,
                    body: body,
                    deadline: deadline
                )
            } catch {
                var failure = RequestError(endingRequest: error)
                let lost = Self.lostAfterSending(failure)
                if lost {
                    failure.mayHaveRun = true
                } else if failure.origin == .received, [.noHandler, .resourceExhausted].contains(failure.code) {
                    failure.mayHaveRun = false
                } else if Self.neverSent(failure) {
                    failure.mayHaveRun = false
                }
                guard options.idempotent, attempt < options.maximumAttempts, ContinuousClock.now < deadline,
                    [.unavailable, .resourceExhausted, .noHandler].contains(failure.code)
                else {
                    if lost, !options.idempotent {
                        failure.message = "collaborator \(nodeID) was lost before it answered; the request may have run"
                    }
                    throw failure
                }
                self.dispatchMetrics.retries.increment()
                self.logger.debug(
                    "dispatched request failed; trying another collaborator",
                    metadata: ["topic": "\(topic)", "node_id": "\(nodeID)", "code": "\(failure.code)"]
                )
                selection.excluded.insert(nodeID)
                lastFailure = failure
            }
        }
    }

    /// Whether `failure` is a request lost with its connection after it may have gone out.
    private static func lostAfterSending(_ failure: RequestError) -> Bool {
        guard failure.code == .unavailable, failure.origin == .ended else { return false }
        let cause = failure.cause as? MessagingError
        return [.connectionClosed, .peerError, .protocolViolation].contains(cause?.code)
    }

    /// Whether `failure` ended a request before it could go out (no connection, or not open).
    private static func neverSent(_ failure: RequestError) -> Bool {
        guard failure.origin == .ended, let cause = failure.cause as? MessagingError else { return false }
        return [.notConnected, .notOpen, .closing].contains(cause.code)
    }

    /// One attempt on `nodeID`, whose slot the caller holds: released when it ends.
    private func attempt(
        topic: String,
        to nodeID: String,
        attempt: Int,
        headers: MessageHeaders,
        body: ByteBuffer,
        deadline: ContinuousClock.Instant
    ) async throws -> Message {
        self.logger.debug(
            "dispatching a request",
            metadata: ["topic": "\(topic)", "node_id": "\(nodeID)", "attempt": "\(attempt)"]
        )
        return try await self.tracing.request(topic: topic, peer: nodeID) {
            try await self.outstandingRequest(
                to: nodeID,
                topic: topic,
                headers: headers,
                body: body,
                timeout: max(deadline - ContinuousClock.now, .zero)
            )
        }
    }

    /// Sends a REQUEST on `nodeID`'s session, with the current trace context in its headers,
    /// for which the caller counted one outstanding request: when it ends, the count goes back
    /// down, and the time an answer took (a refusal included) counts as its answer time.
    func outstandingRequest(
        to nodeID: String,
        topic: String,
        headers: MessageHeaders,
        body: ByteBuffer,
        timeout: Duration?
    ) async throws -> Message {
        let started = ContinuousClock.now
        var answered = false
        defer { self.outstanding(nodeID, by: -1, answeredAfter: answered ? ContinuousClock.now - started : nil) }
        do {
            let session = try self.session(of: nodeID)
            let answer = try await session.request(
                topic: topic,
                headers: self.tracing.headers(headers, on: session),
                body: body,
                timeout: timeout
            )
            answered = true
            return answer
        } catch let error as RequestError {
            answered = error.origin == .received
            throw error
        }
    }

    /// Chooses a collaborator for `selection` and takes one of its slots, waiting in the queue
    /// while every eligible one is at capacity.
    private func collaborator(
        for selection: DispatchSelection,
        deadline: ContinuousClock.Instant
    ) async throws
        -> String
    {
        enum First {
            case chosen(String)
            case failed(RequestError)
            case wait
        }
        let first: First = self.state.withLockedValue { state in
            // Those already waiting come first.
            guard state.dispatch.waiters.isEmpty else { return .wait }
            switch self.choose(selection, &state) {
            case .chosen(let nodeID): return .chosen(nodeID)
            case .none: return .failed(Self.noneEligible(selection.topic))
            case .busy: return .wait
            }
        }
        switch first {
        case .chosen(let nodeID): return nodeID
        case .failed(let error): throw error
        case .wait: break
        }
        let id = self.state.withLockedValue { state in
            state.dispatch.nextID += 1
            state.dispatch.waiters[state.dispatch.nextID] = .pending
            return state.dispatch.nextID
        }
        self.dispatchMetrics.waiting.increment()
        defer {
            self.dispatchMetrics.waiting.decrement()
            _ = self.removeWaiter(id)
        }
        return try await withThrowingTaskGroup(of: String?.self) { group in
            group.addTask {
                try await self.waitInQueue(id: id, selection: selection)
            }
            group.addTask {
                // Cancelled (the wait ended, or the caller's task was cancelled): the wait
                // itself says how it ended, and a collaborator it was given is not lost.
                guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return nil }
                let waiter = self.state.withLockedValue { state -> CheckedContinuation<String, any Error>? in
                    if case .pending? = state.dispatch.waiters[id] {
                        state.dispatch.waiters[id] = .expired
                        return nil
                    }
                    return state.dispatch.takeWaiter(id)?.continuation
                }
                waiter?.resume(throwing: Self.noRoom(selection.topic))
                return nil
            }
            defer { group.cancelAll() }
            while let next = try await group.next() {
                if let next { return next }
            }
            throw CancellationError()
        }
    }

    private func waitInQueue(id: UInt64, selection: DispatchSelection) async throws -> String {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String, any Error>) in
                let now: Result<String, any Error>? = self.state.withLockedValue { state in
                    switch state.dispatch.waiters[id] {
                    case .expired?:
                        state.dispatch.waiters[id] = nil
                        return .failure(Self.noRoom(selection.topic))
                    case .pending? where !Task.isCancelled:
                        break
                    default:
                        state.dispatch.waiters[id] = nil
                        return .failure(CancellationError())
                    }
                    guard state.dispatch.waitingCount < self.configuration.dispatch.maximumWaiting else {
                        state.dispatch.waiters[id] = nil
                        return .failure(
                            RequestError(.resourceExhausted, "too many dispatched requests wait for a collaborator")
                        )
                    }
                    state.dispatch.enqueue(id, DispatchState.Waiter(selection: selection, continuation: continuation))
                    // A slot may have come free since the wait was decided.
                    self.serveWaiters(&state)
                    return nil
                }
                if let now {
                    continuation.resume(with: now)
                }
            }
        } onCancel: {
            self.removeWaiter(id)?.resume(throwing: CancellationError())
        }
    }

    /// Takes wait `id` out of the queue (or forgets it, not yet queued): its continuation if
    /// it was waiting.
    private func removeWaiter(_ id: UInt64) -> CheckedContinuation<String, any Error>? {
        self.state.withLockedValue { state in
            if let waiter = state.dispatch.takeWaiter(id) { return waiter.continuation }
            state.dispatch.waiters[id] = nil
            return nil
        }
    }

    private static func noRoom(_ topic: String) -> RequestError {
        RequestError(.resourceExhausted, "no collaborator that handles \(topic) had room before the deadline")
    }

    private static func noneEligible(_ topic: String) -> RequestError {
        RequestError(.unavailable, "no collaborator that handles \(topic) is connected and active")
    }

    /// Runs `selection` over the connected collaborators; a collaborator chosen has one more
    /// outstanding request.
    private func choose(_ selection: DispatchSelection, _ state: inout State) -> DispatchSelection.Choice {
        let connected = state.sessions.keys.compactMap { state.records[$0] }
        state.dispatch.turn &+= 1
        let choice = selection.choose(
            among: connected,
            turn: state.dispatch.turn & Int.max,
            answerTimes: state.dispatch.recentAnswerTimes(at: .now)
        )
        if case .chosen(let nodeID) = choice {
            state.records[nodeID]?.outstandingRequests += 1
        }
        return choice
    }

    /// Counts a request to `nodeID` starting (`1`) or ending (`-1`, with the time its answer
    /// took when one came); an end may let a waiting dispatch go.
    func outstanding(_ nodeID: String, by change: Int, answeredAfter answerTime: Duration? = nil) {
        self.state.withLockedValue { state in
            if state.records[nodeID] != nil {
                state.records[nodeID]!.outstandingRequests = max(0, state.records[nodeID]!.outstandingRequests + change)
            }
            if let answerTime {
                state.dispatch.answered(nodeID, after: answerTime, at: .now)
            }
            if change < 0 {
                self.serveWaiters(&state, once: true)
            }
        }
    }

    /// Gives waiting dispatches, in order, the collaborators that have room now; fails those
    /// that have no eligible collaborator left. With `once`, stops after the first served (one
    /// slot came free).
    func serveWaiters(_ state: inout State, once: Bool = false) {
        guard !state.dispatch.order.isEmpty else { return }
        var kept: [UInt64] = []
        var index = 0
        let order = state.dispatch.order
        while index < order.count {
            let id = order[index]
            index += 1
            guard case .waiting(let waiter)? = state.dispatch.waiters[id] else { continue }
            switch self.choose(waiter.selection, &state) {
            case .chosen(let nodeID):
                _ = state.dispatch.takeWaiter(id)
                waiter.continuation.resume(returning: nodeID)
                if once {
                    kept.append(contentsOf: order[index...])
                    index = order.count
                }
            case .none:
                _ = state.dispatch.takeWaiter(id)
                waiter.continuation.resume(throwing: Self.noneEligible(waiter.selection.topic))
            case .busy:
                kept.append(id)
            }
        }
        state.dispatch.order = kept
    }
}
