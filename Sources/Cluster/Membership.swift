import Messaging
import NIOCore

/// Where a collaborator stands, as the leader sees it.
public enum CollaboratorState: String, Sendable, Hashable {
    /// Connected, heard from within its heartbeat interval.
    case active
    /// Connected, but one heartbeat interval overdue.
    case suspect
    /// Disconnected; the record is kept for a while, then removed.
    case gone
}

extension CollaboratorState {
    /// The state of a connected collaborator that has been silent for `silence`, whose
    /// heartbeat interval is `heartbeatInterval`: suspect once silence passes two intervals
    /// (one heartbeat overdue), active again when it is heard from. A pure decision: the
    /// leader brings the time.
    func connected(silence: TimeAmount, heartbeatInterval: TimeAmount) -> CollaboratorState {
        let overdue = silence.nanoseconds > 2 * heartbeatInterval.nanoseconds
        switch self {
        case .active where overdue: return .suspect
        case .suspect where !overdue: return .active
        default: return self
        }
    }
}

/// Why a collaborator left.
public enum LeaveReason: Sendable, Hashable {
    /// It said GOODBYE.
    case graceful
    /// Silence past the heartbeat timeout.
    case timeout
    /// The connection ended without GOODBYE (or with an ERROR).
    case connectionLost(String)
    /// A new connection with the same node_id took its place.
    case replaced
    /// Refused after HELLO (not on the allow-list).
    case unauthorized
}

/// What the leader knows of one collaborator.
public struct CollaboratorRecord: Sendable, Hashable {
    public var nodeID: String
    /// The identity in its client certificate (first SAN DNS name, else CN), if it sent one.
    public var certificateIdentity: String?
    public var remoteAddress: String?
    /// The role from its HELLO.
    public var role: String
    public var connectedSince: ContinuousClock.Instant
    public var lastSeen: ContinuousClock.Instant
    /// The latest PING/PONG round trip.
    public var roundTrip: Duration?
    /// Its application status: HELLO metadata "status" at first, then each PING's status blob.
    public var status: String?
    /// Its HELLO metadata.
    public var metadata: [String: String]
    public var state: CollaboratorState
    /// The session id of its current (or last) connection.
    public var sessionID: String?
    /// The topics it handles, as it announced them (PROTOCOL.md 8.5); `nil` when it announced
    /// none (a collaborator without the `interest` extension): it then gets every broadcast,
    /// and no dispatched request unless ``DispatchOptions/includesUnannounced`` says so.
    public var interest: TopicInterest?
    /// The leader's requests to it that await their answer now.
    public var outstandingRequests: Int = 0
}

/// A change in membership.
public enum MembershipEvent: Sendable, Hashable {
    case joined(CollaboratorRecord)
    case statusChanged(nodeID: String, status: String?)
    /// It announced a change in the topics it handles.
    case interestChanged(nodeID: String, interest: TopicInterest)
    case suspect(nodeID: String)
    case active(nodeID: String)
    case left(nodeID: String, reason: LeaveReason)
}
