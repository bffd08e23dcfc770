public import NIOCore

/// Fired inbound once the TLS handshake has completed, before any decrypted data.
public struct TLSHandshakeCompleted: Sendable, Hashable {
    /// What the handshake agreed on, including the peer's certificate.
    public var info: TLSHandshakeInfo
}

/// Drives one TLS connection (an OpenSSL `SSL`) on a channel: ciphertext below, plaintext above.
///
/// - The handshake starts when the channel becomes active and must finish within the
///   handshake timeout, counted from then; otherwise the channel is closed with
///   ``TLSError/Code/handshakeTimeout``. On success ``TLSHandshakeCompleted`` is fired inbound.
/// - Writes are held until `flush`; then all flushed writes go to OpenSSL together (small ones
///   coalesced into one `SSL_write`, so one record carries many small messages) and leave in
///   one write to the channel.
/// - `close` sends close_notify before closing; `close(mode: .output)` sends close_notify and
///   shuts down the TCP write side, and keeps reading.
/// - The peer's close_notify is answered with ours and the channel is closed. An end of input
///   without close_notify is reported as ``TLSError/Code/truncatedConnection``.
/// - Failures (verification, alerts, timeouts) are fired as ``TLSError`` through
///   `errorCaught`, after any alert OpenSSL produced is sent, and the channel is closed.
///
/// State lives on the event loop and is never accessed in overlapping ways, so the stored
/// properties opt out of dynamic exclusivity checks (`@exclusivity(unchecked)`), which are a
/// measurable cost per record.
public final class TLSHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    /// The handshake timeout used when none is given: 10 seconds.
    public static let defaultHandshakeTimeout: Duration = .seconds(10)
    /// How long a close waits for close_notify to be written before closing anyway.
    static let closeNotifyWriteTimeout: TimeAmount = .seconds(1)
    /// Writes at least this large are handed to OpenSSL on their own rather than copied into
    /// the coalescing buffer: they fill whole records anyway.
    static let coalescingLimit = 16_384

    private enum State {
        /// Waiting for the channel to become active.
        case idle
        case handshaking
        case active
        /// We sent close_notify and shut down our write side; still reading.
        case outputClosed
        /// Closing or closed: nothing more is read or written.
        case closed
    }

    private let tlsContext: TLSContext
    private let serverHostname: String?
    private let resumptionKey: String?
    private let handshakeTimeout: TimeAmount?
    @exclusivity(unchecked) private var connection: TLSConnection?
    @exclusivity(unchecked) private var state: State = .idle
    @exclusivity(unchecked) private var pendingWrites = CircularBuffer<PendingWrite>(initialCapacity: 4)
    @exclusivity(unchecked) private var flushedWriteCount = 0
    @exclusivity(unchecked) private var handshakeTimer: Scheduled<Void>?
    @exclusivity(unchecked) private var closeInProgress: EventLoopPromise<Void>?

    /// What the handshake agreed on, once it has completed.
    public private(set) var handshakeInfo: TLSHandshakeInfo?

    /// Creates a handler for `context`'s role.
    ///
    /// - Parameters:
    ///   - context: the shared context (client or server).
    ///   - serverHostname: for a client, the server's DNS name or IP address: verified
    ///     against its certificate and, for names, sent as SNI.
    ///   - resumptionKey: for a client, the key sessions are cached under; defaults to
    ///     `serverHostname` and the remote port.
    ///   - handshakeTimeout: how long the handshake may take; `nil` for no limit.
    public init(
        context: TLSContext,
        serverHostname: String? = nil,
        resumptionKey: String? = nil,
        handshakeTimeout: Duration? = TLSHandler.defaultHandshakeTimeout
    ) {
        self.tlsContext = context
        self.serverHostname = serverHostname
        self.resumptionKey = resumptionKey
        self.handshakeTimeout = handshakeTimeout.map { TimeAmount($0) }
    }

    // MARK: - Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive {
            self.start(context: context)
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
        self.failPendingWrites(ChannelError.ioOnClosedChannel)
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
        switch self.state {
        case .idle, .closed:
            break
        case .handshaking:
            context.fireErrorCaught(TLSError(.closedDuringHandshake, "the connection closed during the TLS handshake"))
        case .active, .outputClosed:
            if self.connection?.receivedCloseNotify != true {
                context.fireErrorCaught(TLSError(.truncatedConnection, "the connection ended without close_notify"))
            }
        }
        self.state = .closed
        self.failPendingWrites(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    private func start(context: ChannelHandlerContext) {
        guard case .idle = self.state else { return }
        let key = self.resumptionKey ?? self.defaultResumptionKey(context: context)
        do {
            self.connection = try TLSConnection(
                context: self.tlsContext,
                allocator: context.channel.allocator,
                serverHostname: self.serverHostname,
                resumptionKey: key
            )
        } catch {
            self.state = .handshaking
            self.fail(context: context, error: error as? TLSError ?? TLSError(.internalError, "\(error)"))
            return
        }
        self.state = .handshaking
        if let timeout = self.handshakeTimeout {
            self.handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
                self.handshakeTimer = nil
                guard case .handshaking = self.state else { return }
                self.fail(
                    context: context,
                    error: TLSError(.handshakeTimeout, "the TLS handshake did not complete within \(timeout)")
                )
            }
        }
        if self.tlsContext.configuration.role == .client {
            self.advanceHandshake(context: context)
        }
    }

    private func defaultResumptionKey(context: ChannelHandlerContext) -> String? {
        guard self.tlsContext.configuration.role == .client else { return nil }
        let port = context.channel.remoteAddress?.port.map { String($0) } ?? ""
        let host = self.serverHostname ?? context.channel.remoteAddress?.ipAddress ?? ""
        return "\(host):\(port)"
    }

    // MARK: - Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection = self.connection else { return }
        switch self.state {
        case .handshaking:
            connection.receiveCiphertext(self.unwrapInboundIn(data))
            self.advanceHandshake(context: context)
        case .active, .outputClosed:
            connection.receiveCiphertext(self.unwrapInboundIn(data))
            self.readPlaintext(context: context)
        case .idle, .closed:
            break
        }
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, let connection = self.connection {
            connection.markTransportEnded()
            switch self.state {
            case .handshaking:
                self.advanceHandshake(context: context)
            case .active, .outputClosed:
                self.readPlaintext(context: context)
            case .idle, .closed:
                break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func advanceHandshake(context: ChannelHandlerContext) {
        guard let connection = self.connection else { return }
        switch connection.handshake() {
        case .inProgress:
            self.flushCiphertext(context: context)
        case .failed(let error):
            self.fail(context: context, error: error)
        case .complete:
            self.handshakeTimer?.cancel()
            self.handshakeTimer = nil
            self.state = .active
            // The handshake's last flight (a client's Finished, a server's tickets) waits for
            // what the layers above answer at once (a HELLO), so both leave in one write.
            if let ciphertext = connection.takeOutboundCiphertext() {
                context.write(self.wrapOutboundOut(ciphertext), promise: nil)
            }
            let info = connection.handshakeInfo
            self.handshakeInfo = info
            context.fireUserInboundEventTriggered(TLSHandshakeCompleted(info: info))
            // Application data may have arrived in the same read as the handshake's end.
            self.readPlaintext(context: context)
            self.encryptFlushedWrites(context: context)
            context.flush()
        }
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        guard let connection = self.connection else { return }
        readLoop: while self.isReading {
            let capacity = min(max(connection.pendingCiphertextCount, 2048), 262_144)
            var buffer = context.channel.allocator.buffer(capacity: capacity)
            let result = connection.readPlaintext(into: &buffer)
            if buffer.readableBytes > 0 {
                context.fireChannelRead(self.wrapInboundOut(buffer))
            }
            switch result {
            case .bufferFull:
                continue
            case .wantMoreCiphertext:
                break readLoop
            case .closeNotify:
                self.closeNotifyReceived(context: context)
                break readLoop
            case .failed(let error):
                self.fail(context: context, error: error)
                break readLoop
            }
        }
        // Reading can produce output: TLS 1.3 key updates, alerts.
        if self.isReading {
            self.flushCiphertext(context: context)
        }
    }

    private var isReading: Bool {
        switch self.state {
        case .active, .outputClosed: true
        case .idle, .handshaking, .closed: false
        }
    }

    private func closeNotifyReceived(context: ChannelHandlerContext) {
        guard let connection = self.connection else { return }
        let alreadySent = self.state == .outputClosed
        self.state = .closed
        self.failPendingWrites(ChannelError.outputClosed)
        if !alreadySent {
            connection.sendCloseNotify()
        }
        self.sendCiphertextThenClose(context: context, promise: nil)
    }

    // MARK: - Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.state {
        case .idle, .handshaking, .active:
            self.pendingWrites.append(PendingWrite(buffer: self.unwrapOutboundIn(data), promise: promise))
        case .outputClosed:
            promise?.fail(ChannelError.outputClosed)
        case .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        self.flushedWriteCount = self.pendingWrites.count
        if case .active = self.state {
            self.encryptFlushedWrites(context: context)
        }
    }

    private func encryptFlushedWrites(context: ChannelHandlerContext) {
        guard self.flushedWriteCount > 0, let connection = self.connection else { return }
        var remaining = self.flushedWriteCount
        self.flushedWriteCount = 0
        var combined: EventLoopPromise<Void>?
        var coalesced: ByteBuffer?
        var failure: TLSError?

        func collect(_ promise: EventLoopPromise<Void>?) {
            guard let promise else { return }
            if let combined {
                combined.futureResult.cascade(to: promise)
            } else {
                combined = promise
            }
        }
        func encryptCoalesced() {
            if failure == nil, let buffer = coalesced {
                failure = connection.writePlaintext(buffer)
            }
            coalesced = nil
        }

        while remaining > 0, let write = self.pendingWrites.popFirst() {
            remaining -= 1
            collect(write.promise)
            guard failure == nil else { continue }
            var buffer = write.buffer
            if buffer.readableBytes >= Self.coalescingLimit {
                encryptCoalesced()
                if failure == nil {
                    failure = connection.writePlaintext(buffer)
                }
            } else if buffer.readableBytes > 0, remaining == 0, coalesced == nil {
                // A lone small write needs no copy.
                failure = connection.writePlaintext(buffer)
            } else if buffer.readableBytes > 0 {
                if coalesced == nil {
                    coalesced = context.channel.allocator.buffer(capacity: max(buffer.readableBytes, 1024))
                }
                coalesced!.writeBuffer(&buffer)
            }
        }
        encryptCoalesced()

        if let failure {
            combined?.fail(failure)
            self.fail(context: context, error: failure)
            return
        }
        if let ciphertext = connection.takeOutboundCiphertext() {
            context.write(self.wrapOutboundOut(ciphertext), promise: combined)
            context.flush()
        } else {
            combined?.succeed(())
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch (mode, self.state) {
        case (.input, _):
            context.close(mode: .input, promise: promise)
        case (.output, .active):
            self.failUnflushedWrites(ChannelError.outputClosed)
            self.state = .outputClosed
            self.connection?.sendCloseNotify()
            self.flushCiphertext(context: context)
            context.close(mode: .output, promise: promise)
        case (.all, .active), (.all, .outputClosed):
            self.state = .closed
            self.failUnflushedWrites(ChannelError.ioOnClosedChannel)
            self.connection?.sendCloseNotify()
            self.sendCiphertextThenClose(context: context, promise: promise)
        case (_, .idle), (_, .handshaking):
            self.state = .closed
            self.handshakeTimer?.cancel()
            self.handshakeTimer = nil
            self.failPendingWrites(ChannelError.ioOnClosedChannel)
            context.close(mode: .all, promise: promise)
        case (_, .outputClosed), (_, .closed):
            if let closing = self.closeInProgress {
                promise.map { closing.futureResult.cascade(to: $0) }
            } else {
                context.close(mode: mode, promise: promise)
            }
        }
    }

    // MARK: - Helpers

    private func flushCiphertext(context: ChannelHandlerContext) {
        if let ciphertext = self.connection?.takeOutboundCiphertext() {
            context.writeAndFlush(self.wrapOutboundOut(ciphertext), promise: nil)
        }
    }

    /// Writes whatever ciphertext is waiting (close_notify, an alert), then closes once it is
    /// written or after ``closeNotifyWriteTimeout``, whichever comes first.
    ///
    /// `beforeFlush` runs once the close is under way and before the ciphertext is flushed: a
    /// close asked for by then waits for the same write.
    private func sendCiphertextThenClose(
        context: ChannelHandlerContext,
        promise: EventLoopPromise<Void>?,
        beforeFlush: () -> Void = {}
    ) {
        if let closing = self.closeInProgress {
            promise.map { closing.futureResult.cascade(to: $0) }
            return
        }
        guard let ciphertext = self.connection?.takeOutboundCiphertext() else {
            beforeFlush()
            context.close(promise: promise)
            return
        }
        let closing = context.eventLoop.makePromise(of: Void.self)
        self.closeInProgress = closing
        promise.map { closing.futureResult.cascade(to: $0) }

        let loop = context.eventLoop.assumeIsolated()
        var closed = false
        func closeOnce() {
            guard !closed else { return }
            closed = true
            context.close(promise: closing)
        }
        let timer = loop.scheduleTask(in: Self.closeNotifyWriteTimeout) { closeOnce() }
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.assumeIsolated().whenComplete { _ in
            timer.cancel()
            closeOnce()
        }
        context.write(self.wrapOutboundOut(ciphertext), promise: written)
        beforeFlush()
        context.flush()
    }

    private func fail(context: ChannelHandlerContext, error: TLSError) {
        switch self.state {
        case .closed:
            return
        case .idle, .handshaking, .active, .outputClosed:
            break
        }
        self.state = .closed
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
        self.failPendingWrites(error)
        if error.code == .handshakeTimeout {
            // Nothing to say to a peer that never finished its part.
            context.fireErrorCaught(error)
            context.close(promise: nil)
        } else if self.connection?.hasOutboundCiphertext == true {
            // The alert is queued and the close under way before the error goes up: a handler
            // above that closes on it waits for the alert instead of cutting it off, and it
            // sees the error before the channel goes inactive (the write may finish at once).
            self.sendCiphertextThenClose(context: context, promise: nil) {
                context.fireErrorCaught(error)
            }
        } else {
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    private func failPendingWrites(_ error: any Error) {
        self.flushedWriteCount = 0
        while let write = self.pendingWrites.popFirst() {
            write.promise?.fail(error)
        }
    }

    private func failUnflushedWrites(_ error: any Error) {
        while self.pendingWrites.count > self.flushedWriteCount, let write = self.pendingWrites.popLast() {
            write.promise?.fail(error)
        }
    }
}

@available(*, unavailable)
extension TLSHandler: Sendable {}

private struct PendingWrite {
    var buffer: ByteBuffer
    var promise: EventLoopPromise<Void>?
}
