/// A leader as the election sees it: its term and where collaborators reach it.
public struct ElectedLeader: Sendable, Hashable, CustomStringConvertible {
    /// The term: it grows with every election won (etcd: the revision at which the leader's
    /// key was made). A collaborator never joins a leader whose term is lower than one it has
    /// seen.
    public var term: UInt64
    /// Where collaborators connect: `host:port` (`[v6]:port` for an IPv6 address).
    public var address: String

    public init(term: UInt64, address: String) {
        self.term = term
        self.address = address
    }

    public var description: String { "term \(self.term) at \(self.address)" }

    /// `address` split into host and port.
    ///
    /// - Throws: `LeaderElectionError` when it is not `host:port`.
    public func hostAndPort() throws -> (host: String, port: Int) {
        try Self.split(self.address)
    }

    /// Splits `host:port` or `[v6]:port`.
    static func split(_ address: String) throws -> (host: String, port: Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
            (1...65_535).contains(port)
        else {
            throw LeaderElectionError("leader address \"\(address)\" is not host:port")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        }
        guard !host.isEmpty else {
            throw LeaderElectionError("leader address \"\(address)\" has no host")
        }
        return (host, port)
    }
}

/// Why an election call failed, or why a leadership ended.
public struct LeaderElectionError: Error, Hashable, Sendable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { self.message }
}

/// A won election, held while its lease is renewed.
public struct Leadership: Sendable, Hashable {
    /// The term of this leadership.
    public var term: UInt64
    /// The address announced to collaborators.
    public var address: String
    /// Before this instant of this process's continuous clock the lease cannot have expired
    /// (the time the confirmed lease request was sent, plus its time to live, minus a margin).
    public var validUntil: ContinuousClock.Instant
    /// What the election needs to keep or give up this leadership (etcd: the lease and the
    /// key).
    public var token: String

    public init(term: UInt64, address: String, validUntil: ContinuousClock.Instant, token: String) {
        self.term = term
        self.address = address
        self.validUntil = validUntil
        self.token = token
    }
}

/// Leader election: candidates campaign, one at a time is elected with a term, and everyone
/// can follow who leads. Consensus is the store's job (etcd, in the `EtcdElection` module); a
/// ``Leader`` given an election campaigns before it serves, and a ``Collaborator`` given one
/// follows the elected leader.
///
/// A leadership lives as long as its lease: ``hold(_:confirmed:)`` renews it and reports each
/// renewal; when renewals stop being confirmed the leader steps down on its own clock, before
/// the lease can have expired, so two leaders never serve at once.
public protocol LeaderElection: Sendable {
    /// Campaigns until this candidate is elected, announcing `address`; returns the won
    /// leadership. Throws `CancellationError` when cancelled, withdrawing the candidacy.
    func campaign(address: String) async throws -> Leadership

    /// Keeps `leadership` alive, calling `confirmed` with each new ``Leadership/validUntil``.
    /// Throws ``LeaderElectionError`` when the lease is lost (expired, revoked, or taken);
    /// returns only when cancelled. A renewal that is merely late does not throw: the caller's
    /// clock, against `validUntil`, decides.
    func hold(_ leadership: Leadership, confirmed: @escaping @Sendable (ContinuousClock.Instant) -> Void) async throws

    /// Gives up `leadership` (etcd: revokes its lease) so that the next candidate is elected
    /// at once. Best effort: a leadership that cannot be given up ends with its lease.
    func resign(_ leadership: Leadership) async

    /// The elected leaders, as they change: the current one first (once there is one), then
    /// each new one. Ends with an error only when the election cannot be followed now (a
    /// follower asks again later); ends without one when there is nothing more to follow (the
    /// election was shut down), and a follower stops.
    func leaders() -> AsyncThrowingStream<ElectedLeader, any Error>
}
