import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SMSGTestSupport
import SecureTransport
import ServiceLifecycle
import Testing

@testable import Messaging

/// The two transports every integration test runs over.
enum TransportKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case plaintext
    case tls

    var testDescription: String { self.rawValue }
}

enum Certificates {
    static let directory: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let root = url.path
        let directory = ProcessInfo.processInfo.environment["SMSG_CERTS"] ?? "\(root)/certs"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["\(root)/scripts/gen-certs.sh", directory]
        process.standardOutput = FileHandle.nullDevice
        try! process.run()
        process.waitUntilExit()
        precondition(process.terminationStatus == 0, "scripts/gen-certs.sh failed")
        return directory
    }()

    static func path(_ name: String) -> String { "\(directory)/\(name)" }

    static func serverTransport(
        _ kind: TransportKind,
        clientAuth: TLSConfiguration.ClientAuthentication = .none
    )
        throws -> any MessagingTransport
    {
        switch kind {
        case .plaintext:
            return PlainTCPTransport()
        case .tls:
            var config = TLSConfiguration.makeServerConfiguration(
                certificateChain: .file(path("server.pem")),
                privateKey: .file(path("server.key"))
            )
            if clientAuth != .none {
                config.trustRoots = .file(path("ca.pem"))
                config.clientAuthentication = clientAuth
            }
            return try TLSTransport(configuration: config)
        }
    }

    static func clientTransport(_ kind: TransportKind, cert: String? = nil) throws -> any MessagingTransport {
        switch kind {
        case .plaintext:
            return PlainTCPTransport()
        case .tls:
            var config = TLSConfiguration.makeClientConfiguration(trustRoots: .file(path("ca.pem")))
            if let cert {
                config.certificateChain = .file(path("\(cert).pem"))
                config.privateKey = .file(path("\(cert).key"))
            }
            return try TLSTransport(configuration: config)
        }
    }
}

/// A server configuration changed by `body`.
func serverConfiguration(_ body: (inout ServerConfiguration) -> Void) -> ServerConfiguration {
    var configuration = ServerConfiguration()
    body(&configuration)
    return configuration
}

let quietLogger = Logger(label: "smsg.test", factory: { _ in SwiftLogNoOpLogHandler() })

/// Echoes like `securemsg bench server`: REQUEST → RESPONSE, other DATA → DATA back.
let echoHandler: SecureMessagingServer.Handler = { session in
    for try await message in session.messages {
        if message.isRequest {
            try await session.respond(to: message, body: message.body)
        } else {
            try await session.send(topic: message.topic, body: message.body)
        }
    }
}

/// Runs a server for the duration of `body`, then shuts it down and waits for `run()`.
func withServer<T>(
    _ kind: TransportKind,
    configuration: ServerConfiguration = ServerConfiguration(),
    clientAuth: TLSConfiguration.ClientAuthentication = .none,
    metrics: MessagingMetrics = MessagingMetrics(),
    handler: @escaping SecureMessagingServer.Handler = echoHandler,
    _ body: (SecureMessagingServer, Int) async throws -> T
) async throws -> T {
    let server = SecureMessagingServer(
        configuration: configuration,
        transport: try Certificates.serverTransport(kind, clientAuth: clientAuth),
        logger: quietLogger,
        metrics: metrics,
        handler: handler
    )
    let running = Task { try await server.run() }
    let port = try await server.listeningAddress().port!
    do {
        let result = try await body(server, port)
        server.shutdown()
        try await running.value
        return result
    } catch {
        server.shutdown()
        _ = try? await running.value
        throw error
    }
}

func connect(
    _ kind: TransportKind,
    port: Int,
    nodeID: String = "client-1",
    cert: String? = nil,
    configure: (inout ClientConfiguration) -> Void = { _ in }
) async throws -> SecureClient {
    var configuration = ClientConfiguration(nodeID: nodeID)
    configure(&configuration)
    return try await SecureClient.connect(
        host: "127.0.0.1",
        port: port,
        transport: try Certificates.clientTransport(kind, cert: cert),
        serverHostname: "localhost",
        configuration: configuration
    )
}

/// What a raw peer received: every frame, and whether the connection closed.
final class FrameRecorder: Sendable {
    private let state = NIOLockedValueBox<(frames: [Frame], closed: Bool)>(([], false))

    var frames: [Frame] { self.state.withLockedValue { $0.frames } }
    var isClosed: Bool { self.state.withLockedValue { $0.closed } }

    func received(_ frame: Frame) {
        self.state.withLockedValue { $0.frames.append(frame) }
    }

    func closed() {
        self.state.withLockedValue { $0.closed = true }
    }
}

/// A hand-driven peer: sends raw bytes, records every frame it receives and when it closed.
struct RawPeer: Sendable {
    let channel: any Channel
    let recorder: FrameRecorder

    var frames: [Frame] { self.recorder.frames }
    var isClosed: Bool { self.recorder.isClosed }

    static func connect(_ kind: TransportKind, port: Int, cert: String? = nil) async throws -> RawPeer {
        let transport = try Certificates.clientTransport(kind, cert: cert)
        let recorder = FrameRecorder()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try transport.configure(channel, serverHostname: "localhost")
                    try channel.pipeline.syncOperations.addHandler(RawPeerHandler(recorder: recorder))
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return RawPeer(channel: channel, recorder: recorder)
    }

    func sendBytes(_ bytes: ByteBuffer) async throws {
        try await self.channel.writeAndFlush(bytes)
    }

    func send(_ frame: Frame) async throws {
        var bytes = ByteBuffer()
        FrameEncoder().encode(frame, allocator: ByteBufferAllocator()) { part in
            var part = part
            bytes.writeBuffer(&part)
        }
        try await self.sendBytes(bytes)
    }

    func sendHello(nodeID: String = "raw-peer", heartbeatMilliseconds: Int? = nil) async throws {
        let hello = Hello(nodeID: nodeID, role: "test", heartbeatMilliseconds: heartbeatMilliseconds)
        try await self.send(Frame(type: .hello, payload: ByteBuffer(bytes: hello.encoded())))
    }

    /// Sends HELLO and waits for the server's.
    func open(nodeID: String = "raw-peer") async throws {
        try await self.sendHello(nodeID: nodeID)
        await eventually("server HELLO") { self.frames.contains { $0.type == .hello } }
    }

    /// The ERROR the server sent, if any: code and reason.
    var error: (ErrorCode, String)? {
        for frame in self.frames where frame.type == .error {
            var payload = frame.payload
            let code = ErrorCode(rawValue: payload.readInteger()!)
            return (code, payload.readString(length: payload.readableBytes) ?? "")
        }
        return nil
    }

    /// Waits for an ERROR and the close that must follow it.
    @discardableResult
    func expectError(
        _ code: ErrorCode,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async -> String? {
        await eventually("ERROR \(code) and close", sourceLocation: sourceLocation) {
            self.error != nil && self.isClosed
        }
        #expect(self.error?.0 == code, "reason: \(self.error?.1 ?? "none")", sourceLocation: sourceLocation)
        return self.error?.1
    }
}

private final class RawPeerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let recorder: FrameRecorder
    private var assembler = FrameAssembler(maxFrame: 1 << 22)

    init(recorder: FrameRecorder) {
        self.recorder = recorder
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.assembler.append(Self.unwrapInboundIn(data))
        do {
            while true {
                switch try self.assembler.next() {
                case .frame(let frame): self.recorder.received(frame)
                case .header: continue
                case .needMoreData: return
                }
            }
        } catch {
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.recorder.closed()
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.recorder.closed()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// A raw frame header followed by `payload`, with every field settable (for malformed frames).
func rawFrame(
    length: UInt32? = nil,
    type: UInt8,
    flags: UInt8 = 0,
    reserved: UInt16 = 0,
    id: UInt64 = 0,
    payload: [UInt8] = []
) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(length ?? UInt32(payload.count))
    buffer.writeInteger(type)
    buffer.writeInteger(flags)
    buffer.writeInteger(reserved)
    buffer.writeInteger(id)
    buffer.writeInteger(UInt64(0))
    buffer.writeBytes(payload)
    return buffer
}

/// A DATA payload: topic length, topic, body.
func dataPayload(topic: String, body: [UInt8]) -> [UInt8] {
    [UInt8(topic.utf8.count)] + Array(topic.utf8) + body
}

/// Runs `service` in a task of its own, for tests that stop it by its own means (`close()`,
/// `shutdown()`) and then check, through the task's value, that `run()` returned.
func startRunning(_ service: some Service) -> Task<Void, any Error> {
    Task { try await service.run() }
}
