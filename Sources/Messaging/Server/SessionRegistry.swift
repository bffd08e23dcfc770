import NIOConcurrencyHelpers

/// The server's live sessions. A session is added when its connection is accepted and leaves
/// when its channel closes, so the count is exact at every moment.
public final class SessionRegistry: Sendable {
    private let sessions = NIOLockedValueBox<[ObjectIdentifier: Session]>([:])

    init() {}

    /// The number of live connections (handshaking, open or draining).
    public var count: Int {
        self.sessions.withLockedValue { $0.count }
    }

    /// A snapshot of the live sessions.
    public var all: [Session] {
        self.sessions.withLockedValue { Array($0.values) }
    }

    /// The open sessions.
    public var open: [Session] {
        self.all.filter { $0.currentState == .open }
    }

    /// The session with `sessionID`, if it is live.
    public func session(withID sessionID: String) -> Session? {
        self.sessions.withLockedValue { sessions in
            sessions.values.first { $0.sessionID == sessionID }
        }
    }

    /// Adds `session` unless the registry already holds `limit` sessions.
    func add(_ session: Session, limit: Int) -> Bool {
        self.sessions.withLockedValue { sessions in
            guard sessions.count < limit else { return false }
            sessions[ObjectIdentifier(session)] = session
            return true
        }
    }

    func remove(_ session: Session) {
        _ = self.sessions.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(session)) }
    }
}
