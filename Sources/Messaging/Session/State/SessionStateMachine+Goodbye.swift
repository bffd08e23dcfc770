import NIOCore

/// GOODBYE: starting a graceful close, answering the peer's, and the drain.
extension SessionStateMachine {
    // MARK: - GOODBYE

    /// Whether a GOODBYE we owe can go now (no RESPONSE is still owed).
    var mayAnswerGoodbye: Bool {
        self.owedResponses.isEmpty
    }

    /// Starts (or answers) a graceful close. Returns whether GOODBYE should be sent now, and
    /// whether the session is then complete (both GOODBYEs exchanged).
    mutating func sendGoodbye() -> (send: Bool, complete: Bool) {
        switch self.state {
        case .open:
            self.state = .draining(sentGoodbye: true, receivedGoodbye: false)
            return (true, false)
        case .draining(sentGoodbye: false, receivedGoodbye: true):
            // The answer to the peer's GOODBYE waits for the RESPONSEs we owe.
            guard self.owedResponses.isEmpty else { return (false, false) }
            self.state = .closed
            self.goodbyeExchanged = true
            return (true, true)
        default:
            return (false, false)
        }
    }

    enum GoodbyeAnswer: Equatable {
        case none
        /// Send GOODBYE and close.
        case sendGoodbyeAndClose
        /// Wait for the RESPONSEs we owe, at most until `deadline` (phase timer).
        case waitForResponses(deadline: NIODeadline)
    }

    /// After the peer's GOODBYE: answer now if no RESPONSE is owed, else arm the drain timeout.
    mutating func answerGoodbye(now: NIODeadline) -> GoodbyeAnswer {
        guard self.goodbyeOwed else { return .none }
        if self.answerGoodbyeIfReady() {
            return .sendGoodbyeAndClose
        }
        guard self.phase != .answerGoodbye else { return .none }
        self.phase = .answerGoodbye
        return .waitForResponses(deadline: now + self.configuration.drainTimeout)
    }

    /// Answers the peer's GOODBYE if it is owed and no RESPONSE is: returns whether GOODBYE
    /// goes now (and the session closes).
    mutating func answerGoodbyeIfReady() -> Bool {
        guard self.goodbyeOwed, self.mayAnswerGoodbye else { return false }
        self.goodbyeOwed = false
        _ = self.sendGoodbye()
        self.phase = nil
        return true
    }
}
