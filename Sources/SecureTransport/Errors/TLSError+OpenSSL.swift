internal import COpenSSL

extension TLSError {
    /// Drains OpenSSL's thread-local error queue into readable text, oldest first.
    ///
    /// Draining matters beyond the message: a stale entry left on the queue would be misread as
    /// the cause of the next failure on the same thread, which may belong to another connection.
    static func drainErrorQueue() -> [String] {
        var messages: [String] = []
        while true {
            let packed = ERR_get_error()
            if packed == 0 { break }
            if let text = Self.describe(packed) {
                messages.append(text)
            }
        }
        return messages
    }

    /// Discards whatever is on OpenSSL's error queue.
    static func clearErrorQueue() {
        ERR_clear_error()
    }

    /// Makes an error from the queue, falling back to `fallback` when the queue is empty.
    static func fromErrorQueue(_ code: Code, _ fallback: String) -> TLSError {
        let messages = self.drainErrorQueue()
        if messages.isEmpty {
            return TLSError(code, fallback)
        }
        return TLSError(code, "\(fallback): \(messages.joined(separator: "; "))")
    }

    private static func describe(_ packed: UInt) -> String? {
        if let reason = ERR_reason_error_string(packed) {
            return String(cString: reason)
        }
        let library = ERR_lib_error_string(packed).map { String(cString: $0) } ?? "OpenSSL"
        return "\(library) error \(packed & 0x7F_FFFF)"
    }
}
