/// A failure of the election on etcd: a setting that cannot be used, no member reachable, or
/// etcd answering with an error.
///
/// Which failures are worth another member is decided by etcd's own status code (gRPC's
/// UNAVAILABLE and DEADLINE_EXCEEDED, which etcd gives for "no leader", "leader changed", a
/// stopping member or a request that timed out). Only where etcd gives no status, UNKNOWN, is
/// its message read: its election service passes on the errors of etcd's own client library,
/// which lose their status on the way, and there etcd's fixed descriptions
/// (its `rpctypes` errors) still tell.
public struct EtcdError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case invalidConfiguration, unreachable, server, badAnswer, shutDown
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// A setting that cannot be used: an endpoint URL, the election's name, the lease's
        /// time to live, the TLS configuration.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// No member could be reached, or none answered in time.
        public static let unreachable = Code(.unreachable)
        /// etcd answered with an error (see ``EtcdError/status``).
        public static let server = Code(.server)
        /// etcd's answer could not be read.
        public static let badAnswer = Code(.badAnswer)
        /// The election was shut down (``EtcdLeaderElection/shutdown()``).
        public static let shutDown = Code(.shutDown)

        public var description: String {
            switch self.base {
            case .invalidConfiguration: "invalid configuration"
            case .unreachable: "unreachable"
            case .server: "server error"
            case .badAnswer: "bad answer"
            case .shutDown: "shut down"
            }
        }
    }

    /// etcd's status codes (gRPC's) that the election acts on.
    public enum Status {
        /// The request's deadline passed on the member.
        public static let deadlineExceeded = 4
        /// What etcd answers for a lease it does not know (expired or revoked).
        public static let notFound = 5
        /// The member cannot serve now: no leader, leader changed, stopping, timed out.
        public static let unavailable = 14
    }

    /// What kind of failure this is.
    public var code: Code
    /// What went wrong, for people.
    public var message: String
    /// etcd's status code (gRPC's numbering) when etcd answered with an error.
    public var status: Int?
    /// The error underneath, when there is one (a connection's failure, a TLS error).
    public var cause: (any Error)?

    /// Makes an error.
    ///
    /// - Parameters:
    ///   - code: What kind of failure this is.
    ///   - message: What went wrong, for people.
    ///   - status: etcd's status code, when etcd answered with an error.
    ///   - cause: The error underneath, if any.
    public init(_ code: Code, _ message: String, status: Int? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.status = status
        self.cause = cause
    }

    public var description: String {
        switch self.code {
        case .invalidConfiguration: "etcd election settings cannot be used: \(self.message)"
        case .unreachable: "no etcd member answered: \(self.message)"
        case .server: "etcd refused (status \(self.status ?? 2)): \(self.message)"
        case .badAnswer: "etcd's answer could not be read: \(self.message)"
        default: "etcd election: \(self.message)"
        }
    }

    /// Compares code, message and status; the cause is not compared.
    public static func == (lhs: EtcdError, rhs: EtcdError) -> Bool {
        lhs.code == rhs.code && lhs.message == rhs.message && lhs.status == rhs.status
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.code)
        hasher.combine(self.message)
        hasher.combine(self.status)
    }

    /// gRPC's UNKNOWN: what etcd's election service answers for its client library's errors.
    static let unknownStatus = 2

    /// etcd's descriptions of failures another member may not have (its `rpctypes` errors and
    /// its client library's), read only when etcd gave no status (UNKNOWN).
    static let transientDescriptions = [
        "etcdserver: no leader", "etcdserver: leader changed", "etcdserver: request timed out",
        "etcdserver: server stopped", "etcdserver: not capable", "etcdserver: too many requests",
        "context deadline exceeded", "transport is closing",
    ]

    /// etcd's description of a lease it does not know, read only when it gave no status.
    static let leaseNotFoundDescription = "etcdserver: requested lease not found"

    /// Whether etcd gave no status, only words.
    private var statusUnknown: Bool { self.code == .server && self.status == Self.unknownStatus }

    /// etcd no longer knows the lease (it expired or was revoked): NOT_FOUND, or etcd's words
    /// for it under UNKNOWN.
    var isLeaseNotFound: Bool {
        guard self.code == .server else { return false }
        return self.status == Status.notFound
            || (self.statusUnknown && self.message.contains(Self.leaseNotFoundDescription))
    }

    /// Whether another member may answer where this one failed: it could not be reached, or it
    /// said it cannot serve now (by its status, or under UNKNOWN by etcd's words for it).
    var triesAnotherMember: Bool {
        switch self.code {
        case .unreachable:
            return true
        case .server:
            if self.status == Status.unavailable || self.status == Status.deadlineExceeded { return true }
            return self.statusUnknown && Self.transientDescriptions.contains { self.message.contains($0) }
        default:
            return false
        }
    }
}
