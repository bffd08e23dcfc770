import NIOConcurrencyHelpers
public import NIOCore
public import NIOPosix

/// A TCP proxy on 127.0.0.1 that can misbehave on command: delay, black-hole, cut every
/// connection, or refuse new ones. For resilience tests; it never touches another address.
public final class FaultProxy: Sendable {
    /// The port clients connect to.
    public let port: Int
    private let listener: any Channel
    private let state: NIOLockedValueBox<State>

    struct State {
        var paused = false
        var refusing = false
        var delay: TimeAmount = .zero
        var connections: [ObjectIdentifier: any Channel] = [:]
    }

    /// Starts a proxy forwarding to 127.0.0.1:`targetPort`.
    public static func start(
        targetPort: Int,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> FaultProxy {
        let state = NIOLockedValueBox(State())
        let listener = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { inbound in
                // The accepted channel is registered (and starts reading) only once this future
                // succeeds; a failed future closes it: that is how a refusal looks.
                if state.withLockedValue({ $0.refusing }) {
                    return inbound.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
                }
                return ClientBootstrap(group: inbound.eventLoop)
                    .channelInitializer { outbound in
                        outbound.pipeline.addHandler(ForwardHandler(partner: inbound, state: state))
                    }
                    .connect(host: "127.0.0.1", port: targetPort)
                    .flatMap { outbound in
                        state.withLockedValue {
                            $0.connections[ObjectIdentifier(inbound)] = inbound
                            $0.connections[ObjectIdentifier(outbound)] = outbound
                        }
                        for channel in [inbound, outbound] {
                            channel.closeFuture.whenComplete { _ in
                                _ = state.withLockedValue {
                                    $0.connections.removeValue(forKey: ObjectIdentifier(channel))
                                }
                            }
                        }
                        return inbound.pipeline.addHandler(ForwardHandler(partner: outbound, state: state))
                    }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return FaultProxy(listener: listener, state: state)
    }

    private init(listener: any Channel, state: NIOLockedValueBox<State>) {
        self.listener = listener
        self.port = listener.localAddress!.port!
        self.state = state
    }

    /// Proxied connections open now (each proxied connection counts twice: both legs).
    public var openChannelCount: Int { self.state.withLockedValue { $0.connections.count } }

    /// While paused, bytes in both directions are dropped: a black hole.
    public func setPaused(_ paused: Bool) {
        self.state.withLockedValue { $0.paused = paused }
    }

    /// While refusing, new connections are accepted and closed at once.
    public func setRefusingNewConnections(_ refusing: Bool) {
        self.state.withLockedValue { $0.refusing = refusing }
    }

    /// Adds `delay` before each chunk is forwarded.
    public func setDelay(_ delay: TimeAmount) {
        self.state.withLockedValue { $0.delay = delay }
    }

    /// Closes every proxied connection, both legs.
    public func cutAll() {
        let channels = self.state.withLockedValue { Array($0.connections.values) }
        for channel in channels {
            channel.close(promise: nil)
        }
    }

    /// Stops listening and cuts every connection.
    public func close() async {
        self.cutAll()
        try? await self.listener.close()
    }
}

private final class ForwardHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    let partner: any Channel
    let state: NIOLockedValueBox<FaultProxy.State>

    init(partner: any Channel, state: NIOLockedValueBox<FaultProxy.State>) {
        self.partner = partner
        self.state = state
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = Self.unwrapInboundIn(data)
        let (paused, delay) = self.state.withLockedValue { ($0.paused, $0.delay) }
        guard !paused else { return }
        let partner = self.partner
        if delay > .zero {
            context.eventLoop.scheduleTask(in: delay) { partner.writeAndFlush(buffer, promise: nil) }
        } else {
            partner.writeAndFlush(buffer, promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.partner.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
