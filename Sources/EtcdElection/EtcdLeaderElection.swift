public import Cluster
import FoundationEssentials
public import Logging
import Messaging
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix
public import SecureTransport

/// Settings of an ``EtcdLeaderElection``.
public struct EtcdElectionConfiguration: Sendable {
    /// The client URLs of etcd's members (`http://host:port`, `https://host:port`); calls fail
    /// over between them.
    public var endpoints: [String]
    /// The election's name: candidates and followers of one group share it.
    public var electionName: String
    /// The time to live of a candidate's lease, in whole seconds (etcd's unit). A leader whose
    /// renewals stop steps down within it; a leader that dies is replaced after it.
    public var leaseTTL: Duration = .seconds(5)
    /// The TLS settings for `https://` endpoints: etcd's CA as trust roots and, for etcd's
    /// client-certificate authentication (`--client-cert-auth`), this side's certificate and
    /// key. The election offers ALPN `http/1.1` whatever the configuration lists (etcd refuses
    /// a client that offers only `smsg/1`, the configurations' default).
    public var tls: TLSConfiguration?
    /// How long to wait for a TCP connection to a member.
    public var connectTimeout: Duration = .seconds(2)

    public init(endpoints: [String], electionName: String) {
        self.endpoints = endpoints
        self.electionName = electionName
    }
}

/// Leader election on etcd (v3, through its JSON gateway), as Kubernetes does it: each
/// candidate holds a lease, campaigns in etcd's election service, and leads while its lease
/// lives; the term is the revision at which its key was made, so it grows with every election.
///
/// A leader renews its lease four times per time to live. `Leadership.validUntil` is the
/// instant a renewal was *sent* plus four fifths of the time to live: before it, etcd cannot
/// have let the lease expire, whatever happened since. Endpoints are tried in turn from the
/// last one that answered, so losing an etcd member changes nothing while a quorum remains.
public final class EtcdLeaderElection: LeaderElection {
    public let configuration: EtcdElectionConfiguration
    private let gateway: EtcdGateway
    private let logger: Logger
    private let ttlSeconds: Int64
    private let readers = LeaderReaders()
    private let loops: EtcdEventLoops

    /// Makes an election client; nothing is sent to etcd, and no thread started, until it is
    /// used.
    ///
    /// - Parameters:
    ///   - configuration: the etcd endpoints, the election's name, the lease's time to live,
    ///     the TLS settings for `https://` endpoints.
    ///   - group: where the calls to etcd run; `nil`: an event loop of the election's own,
    ///     made on first use and used by nothing else, so that a leader's renewals never wait
    ///     behind the TLS handshakes of collaborators joining it. ``shutdown()`` ends it (an
    ///     election that is let go without it ends it too); a group given here is the caller's
    ///     to shut down.
    ///   - logger: where failed calls, failovers between members and lost leases are logged.
    /// - Throws: ``EtcdError`` with ``EtcdError/Code/invalidConfiguration`` when an endpoint is
    ///   not a usable URL, there is none, the lease time to live is under one second, or the
    ///   TLS settings do not load (the `TLSError` is its cause).
    public init(
        configuration: EtcdElectionConfiguration,
        group: (any EventLoopGroup)? = nil,
        logger: Logger = Logger.current
    ) throws {
        guard !configuration.endpoints.isEmpty else {
            throw EtcdError(.invalidConfiguration, "no etcd endpoint given")
        }
        guard !configuration.electionName.isEmpty else {
            throw EtcdError(.invalidConfiguration, "the election needs a name")
        }
        let ttl = configuration.leaseTTL.components.seconds
        guard ttl >= 1 else {
            throw EtcdError(.invalidConfiguration, "the lease time to live is at least one second")
        }
        self.configuration = configuration
        self.ttlSeconds = ttl
        self.logger = logger
        let loops = EtcdEventLoops(given: group)
        self.loops = loops
        do {
            self.gateway = try EtcdGateway(
                endpoints: try configuration.endpoints.map(EtcdEndpoint.init),
                tls: configuration.tls,
                loops: loops,
                connectTimeout: .nanoseconds(
                    configuration.connectTimeout.components.seconds * 1_000_000_000
                        + configuration.connectTimeout.components.attoseconds / 1_000_000_000
                ),
                logger: logger
            )
        } catch let error as TLSError {
            throw EtcdError(.invalidConfiguration, "the TLS settings for etcd: \(error)", cause: error)
        }
    }

    deinit {
        self.loops.shutDownInBackground()
    }

    /// Ends the election client: observations end (every ``leaders()`` sequence finishes), calls
    /// made from now on throw ``EtcdError`` with ``EtcdError/Code/shutDown``, the connections of
    /// calls still under way are closed (those calls fail), and once they have all returned the
    /// election's own event loop stops. Leadership is not resigned here: a `Leader` resigns its
    /// own as it stops, so shut the election down after the services that use it have returned.
    public func shutdown() async {
        self.readers.finishAll()
        await self.loops.shutDown()
    }

    private var name: GatewayBytes { GatewayBytes(self.configuration.electionName) }
    private var renewInterval: Duration { .seconds(self.ttlSeconds) / 4 }
    /// For calls outside the renewals: a busy etcd (a fresh member's first writes, a loaded
    /// machine) can take seconds, and waiting costs no safety.
    private let callTimeout = Duration.seconds(5)

    private func validUntil(sentAt sent: ContinuousClock.Instant, ttl: Int64) -> ContinuousClock.Instant {
        sent + .seconds(ttl) * 4 / 5
    }

    // MARK: - Campaign

    public func campaign(address: String) async throws -> Leadership {
        while true {
            try Task.checkCancellation()
            let sent = ContinuousClock.now
            let grant = try await self.gateway.call(
                "/v3/lease/grant",
                LeaseGrantRequest(TTL: GatewayInt(self.ttlSeconds)),
                as: LeaseGrantResponse.self,
                timeout: self.callTimeout
            )
            guard let id = grant.ID?.value, let ttl = grant.TTL?.value, ttl > 0 else {
                throw EtcdError(.badAnswer, "lease grant: \(grant.error ?? "no lease")")
            }
            do {
                if let leadership = try await self.campaign(lease: id, ttl: ttl, sent: sent, address: address) {
                    return leadership
                }
                // The lease expired while waiting: campaign with a new one, after a pause.
                await self.revoke(lease: id)
                try await Task.sleep(for: .milliseconds(200))
            } catch {
                // Withdrawn (cancelled, or etcd failed): the candidacy goes with its lease, even
                // from a cancelled task.
                await Task { await self.revoke(lease: id) }.value
                throw error
            }
        }
    }

    /// Campaigns with `lease` (renewing it meanwhile) until elected; `nil` when the lease is
    /// lost first.
    private func campaign(
        lease: Int64,
        ttl: Int64,
        sent: ContinuousClock.Instant,
        address: String
    ) async throws
        -> Leadership?
    {
        let confirmed = ConfirmedUntil(self.validUntil(sentAt: sent, ttl: ttl))
        return try await withThrowingTaskGroup(of: Leadership?.self) { group in
            group.addTask {
                try await self.renew(lease: lease) { confirmed.extend(to: $0) }
                return nil
            }
            group.addTask {
                // The call blocks until elected; a member lost on the way is asked again (the
                // same lease's campaign takes up its own key).
                while true {
                    do {
                        let answer = try await self.gateway.call(
                            "/v3/election/campaign",
                            CampaignRequest(name: self.name, lease: GatewayInt(lease), value: GatewayBytes(address)),
                            as: CampaignResponse.self,
                            timeout: .seconds(365 * 24 * 3600)
                        )
                        guard let key = answer.leader else {
                            throw EtcdError(.badAnswer, "campaign: no leader key")
                        }
                        // etcd can declare a waiting campaign won after its lease expired: the
                        // win counts only if the lease still lives and the key still leads.
                        guard try await self.stillLeads(key, confirmed: confirmed) else { return nil }
                        return Leadership(
                            term: UInt64(key.rev.value),
                            address: address,
                            validUntil: confirmed.value,
                            token: try Self.token(key)
                        )
                    } catch let error as EtcdError where error.triesAnotherMember {
                        self.logger.info("campaign interrupted; again", metadata: ["error": "\(error)"])
                        try await Task.sleep(for: .milliseconds(200))
                    } catch let error as EtcdError where error.isLeaseNotFound {
                        // Expired before the campaign reached etcd (a slow etcd, a paused
                        // process): campaign again with a new lease.
                        self.logger.info(
                            "candidate's lease expired before its campaign",
                            metadata: ["error": "\(error)"]
                        )
                        return nil
                    }
                }
            }
            defer { group.cancelAll() }
            do {
                let first = try await group.next() ?? nil
                return first
            } catch let error as LeaderElectionError {
                self.logger.warning("candidate's lease lost while campaigning", metadata: ["error": "\(error)"])
                return nil
            }
        }
    }

    /// Whether `key` is the election's leader now, with its lease alive (confirmed anew).
    private func stillLeads(_ key: LeaderKey, confirmed: ConfirmedUntil) async throws -> Bool {
        let sent = ContinuousClock.now
        let renewal = try await self.gateway.call(
            "/v3/lease/keepalive",
            LeaseIDRequest(ID: GatewayInt(key.lease.value)),
            as: LeaseKeepAliveAnswer.self,
            timeout: self.callTimeout
        )
        guard let ttl = renewal.result?.TTL?.value, ttl > 0 else {
            self.logger.info("campaign won with an expired lease; campaigning again")
            return false
        }
        confirmed.extend(to: self.validUntil(sentAt: sent, ttl: ttl))
        let leader = try await self.gateway.call(
            "/v3/election/leader",
            ElectionNameRequest(name: self.name),
            as: LeaderResponse.self,
            timeout: self.callTimeout
        )
        guard leader.kv?.key == key.key, leader.kv?.create_revision == key.rev else {
            self.logger.info("campaign won but the key no longer leads; campaigning again")
            return false
        }
        return true
    }

    // MARK: - Holding

    public func hold(
        _ leadership: Leadership,
        confirmed: @escaping @Sendable (ContinuousClock.Instant) -> Void
    ) async throws {
        let key = try Self.key(of: leadership)
        do {
            try await self.renew(lease: key.lease.value, confirmed: confirmed)
        } catch is CancellationError {
            return
        }
    }

    /// Renews `lease` every quarter of its time to live until cancelled; throws
    /// ``LeaderElectionError`` when etcd says the lease is gone. Renewals go out on that
    /// cadence whether or not the last one was answered (a slow answer, from a busy etcd or
    /// machine, must not hold back the next: one late answer would otherwise leave a gap longer
    /// than the lease's margin); each answer confirms from the time its request was sent.
    /// Failures are logged: the holder's clock decides when they have failed for too long.
    private func renew(lease: Int64, confirmed: @escaping @Sendable (ContinuousClock.Instant) -> Void) async throws {
        enum Step: Sendable {
            case tick
            case answered
        }
        try await withThrowingTaskGroup(of: Step.self) { group in
            // The body waits on the group, so a lost lease (a child throwing) or cancellation
            // ends it at once; a tick is a child that sleeps one interval.
            group.addTask {
                try await Task.sleep(for: self.renewInterval)
                return .tick
            }
            var inFlight = 0
            while let step = try await group.next() {
                guard case .tick = step else {
                    inFlight -= 1
                    continue
                }
                group.addTask {
                    try await Task.sleep(for: self.renewInterval)
                    return .tick
                }
                // At most one time to live's worth of renewals outstanding.
                guard inFlight < 4 else {
                    self.logger.warning("lease renewals unanswered; waiting for one before sending more")
                    continue
                }
                inFlight += 1
                let sent = ContinuousClock.now
                group.addTask {
                    // etcd says a lease is gone with a zero time to live, or with an error.
                    let ttl: Int64
                    do {
                        let answer = try await self.gateway.call(
                            "/v3/lease/keepalive",
                            LeaseIDRequest(ID: GatewayInt(lease)),
                            as: LeaseKeepAliveAnswer.self,
                            // Per member: a stalled one leaves time to ask another before
                            // the last confirmation runs out (four fifths of the lease).
                            timeout: self.renewInterval * 2
                        )
                        ttl = answer.result?.TTL?.value ?? 0
                    } catch let error as EtcdError where error.isLeaseNotFound {
                        ttl = 0
                    } catch let error as EtcdError {
                        self.logger.warning("lease renewal failed", metadata: ["error": "\(error)"])
                        return .answered
                    }
                    guard ttl > 0 else {
                        throw LeaderElectionError("the lease expired (etcd no longer knows it)")
                    }
                    confirmed(self.validUntil(sentAt: sent, ttl: ttl))
                    return .answered
                }
            }
        }
    }

    public func resign(_ leadership: Leadership) async {
        guard let key = try? Self.key(of: leadership) else { return }
        await self.revoke(lease: key.lease.value)
    }

    /// Revokes `lease` (its keys go with it); failures are only logged.
    private func revoke(lease: Int64) async {
        do {
            _ = try await self.gateway.call(
                "/v3/lease/revoke",
                LeaseIDRequest(ID: GatewayInt(lease)),
                as: Empty.self,
                timeout: self.callTimeout
            )
        } catch {
            self.logger.info("lease not revoked; it ends with its time to live", metadata: ["error": "\(error)"])
        }
    }

    private static func token(_ key: LeaderKey) throws -> String {
        String(decoding: try JSONEncoder().encode(key), as: UTF8.self)
    }

    private static func key(of leadership: Leadership) throws -> LeaderKey {
        try JSONDecoder().decode(LeaderKey.self, from: Data(leadership.token.utf8))
    }

    // MARK: - Following

    /// Readers of one instance share one observation of etcd (a process running many
    /// collaborators asks etcd once, not once each); a reader that comes later is told the
    /// current leader at once. The observation ends with its last reader.
    public func leaders() -> AsyncThrowingStream<ElectedLeader, any Error> {
        self.readers.add { offer in
            Task { await self.observe(offer: offer) }
        }
    }

    private func observe(offer: @escaping @Sendable (ElectedLeader) -> Void) async {
        var failures = 0
        while !Task.isCancelled {
            let started = ContinuousClock.now
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        try await self.gateway.stream("/v3/election/observe", ElectionNameRequest(name: self.name)) {
                            (answer: ObserveAnswer) in
                            if let leader = Self.leader(answer.result?.kv) { offer(leader) }
                        }
                    }
                    group.addTask {
                        // A member cut off from the others keeps an observation open and says
                        // nothing: ask for the leader once per lease too (through any member).
                        while true {
                            try await Task.sleep(for: .seconds(self.ttlSeconds))
                            let answer = try? await self.gateway.call(
                                "/v3/election/leader",
                                ElectionNameRequest(name: self.name),
                                as: LeaderResponse.self,
                                timeout: self.callTimeout
                            )
                            if let leader = Self.leader(answer?.kv) { offer(leader) }
                        }
                    }
                    defer { group.cancelAll() }
                    try await group.next()
                }
            } catch is CancellationError {
                break
            } catch {
                self.logger.info("observing the election failed; again", metadata: ["error": "\(error)"])
            }
            // A stream that lasted is not a run of failures.
            failures = ContinuousClock.now - started > .seconds(5) ? 1 : failures + 1
            try? await Task.sleep(for: .milliseconds(min(2_000, 100 * failures)))
        }
    }

    private static func leader(_ kv: KeyValue?) -> ElectedLeader? {
        guard let kv, let revision = kv.create_revision?.value, revision > 0, let value = kv.value else { return nil }
        return ElectedLeader(term: UInt64(revision), address: value.text)
    }
}

/// The readers of ``EtcdLeaderElection/leaders()``, told each leader once, in order of term:
/// the poll and a renewed observation report the one already told, and a poll answered just
/// before an election can arrive after it.
private final class LeaderReaders: Sendable {
    private struct State {
        var readers: [Int: AsyncThrowingStream<ElectedLeader, any Error>.Continuation] = [:]
        var nextID = 0
        var latest: ElectedLeader?
        var observation: Task<Void, Never>?
        /// Which observation may offer: one cancelled may still answer, and is not heard.
        var generation = 0
        /// The election was shut down: no more readers.
        var finished = false
    }

    private let state = NIOLockedValueBox(State())

    /// A new reader; `observe` starts the observation, given where to offer what it sees,
    /// when the reader is the only one.
    func add(
        observe: (@escaping @Sendable (ElectedLeader) -> Void) -> Task<Void, Never>
    ) -> AsyncThrowingStream<ElectedLeader, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(
            of: ElectedLeader.self,
            bufferingPolicy: .bufferingNewest(16)
        )
        let id = self.state.withLockedValue { state -> Int? in
            guard !state.finished else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.readers[id] = continuation
            if let latest = state.latest {
                continuation.yield(latest)
            }
            if state.observation == nil {
                let generation = state.generation
                state.observation = observe { self.offer($0, generation: generation) }
            }
            return id
        }
        guard let id else {
            // Shut down: there is nothing more to follow.
            continuation.finish()
            return stream
        }
        continuation.onTermination = { _ in self.remove(id) }
        return stream
    }

    private func remove(_ id: Int) {
        let ended: Task<Void, Never>? = self.state.withLockedValue { state in
            state.readers[id] = nil
            guard state.readers.isEmpty else { return nil }
            defer {
                state.observation = nil
                state.latest = nil
                state.generation += 1
            }
            return state.observation
        }
        ended?.cancel()
    }

    /// Ends every reader's sequence and the observation, for good: a reader added later is
    /// finished at once.
    func finishAll() {
        let (readers, observation) = self.state.withLockedValue { state in
            defer {
                state.readers = [:]
                state.observation = nil
                state.finished = true
                state.generation += 1
            }
            return (Array(state.readers.values), state.observation)
        }
        observation?.cancel()
        for reader in readers {
            reader.finish()
        }
    }

    private func offer(_ leader: ElectedLeader, generation: Int) {
        self.state.withLockedValue { state in
            guard generation == state.generation, leader.term > state.latest?.term ?? 0 else { return }
            state.latest = leader
            for continuation in state.readers.values {
                continuation.yield(leader)
            }
        }
    }
}

/// The latest `Leadership.validUntil` confirmed while campaigning.
private final class ConfirmedUntil: Sendable {
    private let box: NIOLockedValueBox<ContinuousClock.Instant>

    init(_ initial: ContinuousClock.Instant) {
        self.box = NIOLockedValueBox(initial)
    }

    var value: ContinuousClock.Instant { self.box.withLockedValue { $0 } }

    func extend(to instant: ContinuousClock.Instant) {
        self.box.withLockedValue { $0 = max($0, instant) }
    }
}
