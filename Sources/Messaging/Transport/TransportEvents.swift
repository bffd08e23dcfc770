import SecureTransport

/// What a transport knows of a connection once it is ready for frames (TCP accepted or
/// connected, TLS handshake complete).
///
/// The session code sees transports only through this and ``TransportFailure``: TLS stays
/// below the transport.
struct TransportReady: Sendable {
    /// The identity the transport authenticated for the peer (what its certificate names
    /// under the session's ``IdentityMapping``), if any.
    var peerIdentity: String?
    /// What the TLS handshake agreed on, for a TLS connection.
    var tls: TLSHandshakeInfo?
}

/// A failure of the transport under a session (a TLS alert, a broken handshake, an end
/// without close_notify).
struct TransportFailure: Error, Sendable, CustomStringConvertible {
    var description: String
    /// The connection ended without the transport's own close (TLS close_notify): after our
    /// own close this is no failure.
    var isTruncation: Bool
    /// The TLS failure itself, for a TLS transport.
    var tls: TLSError? = nil

    /// Why a server refuses the peer, when this failure comes before the transport is ready.
    var refusal: RefusalReason? { self.tls?.refusalReason }
}

/// An inbound user event that says the transport is ready.
protocol TransportReadyEvent {
    var transportReady: TransportReady { get }
}

/// An error that a transport's handlers report.
protocol TransportFailureEvent: Error {
    var transportFailure: TransportFailure { get }
}

extension TLSHandshakeCompleted: TransportReadyEvent {
    var transportReady: TransportReady {
        TransportReady(tls: self.info)
    }
}

extension TLSError: TransportFailureEvent {
    var transportFailure: TransportFailure {
        TransportFailure(
            description: "\(self)",
            isTruncation: self.code == .truncatedConnection,
            tls: self
        )
    }

    /// The refusal this failure means during a server's handshake.
    fileprivate var refusalReason: RefusalReason {
        switch self.code {
        case .certificateRequired: .certificateMissing
        case .certificateVerificationFailed: .certificateUntrusted
        case .handshakeTimeout: .handshakeTimeout
        case .closedDuringHandshake: .closedDuringHandshake
        case .alertReceived, .certificateRejected: .alertReceived
        case .noApplicationProtocol: .noApplicationProtocol
        default: .handshakeFailed
        }
    }
}
