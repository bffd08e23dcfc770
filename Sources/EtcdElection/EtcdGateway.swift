import FoundationEssentials
import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import SecureTransport

/// One etcd member's client URL: `http://host:port` or `https://host:port`.
struct EtcdEndpoint: Sendable, Hashable, CustomStringConvertible {
    var secure: Bool
    var host: String
    var port: Int

    init(_ url: String) throws {
        let secure: Bool
        var rest: Substring
        if url.hasPrefix("http://") {
            secure = false
            rest = url.dropFirst("http://".count)
        } else if url.hasPrefix("https://") {
            secure = true
            rest = url.dropFirst("https://".count)
        } else {
            throw EtcdError(.invalidConfiguration, "endpoint \"\(url)\": it must start with http:// or https://")
        }
        if rest.hasSuffix("/") {
            rest = rest.dropLast()
        }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65_535).contains(port)
        else {
            throw EtcdError(.invalidConfiguration, "endpoint \"\(url)\": it must name a port")
        }
        var host = rest[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = host.dropFirst().dropLast()
        }
        guard !host.isEmpty, !host.contains("/") else {
            throw EtcdError(.invalidConfiguration, "endpoint \"\(url)\": it must be scheme://host:port")
        }
        self.secure = secure
        self.host = String(host)
        self.port = port
    }

    var description: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "\(self.secure ? "https" : "http")://\(host):\(self.port)"
    }
}

/// etcd's v3 JSON gateway over HTTP/1.1 (NIOHTTP1's codec) on our plain or TLS transport:
/// unary calls and streams of one JSON object per line, with failover between members.
final class EtcdGateway: Sendable {
    let endpoints: [EtcdEndpoint]
    private let plain: any MessagingTransport
    private let secure: (any MessagingTransport)?
    /// The event loops of the calls, and the calls under way.
    private let loops: EtcdEventLoops
    private let connectTimeout: TimeAmount
    private let logger: Logger
    /// The member to try first: the last one that answered.
    private let preferred = NIOLockedValueBox(0)

    /// The ALPN protocol etcd's gateway speaks. etcd refuses a client that offers only others
    /// (`smsg/1`, a TLS configuration's default) with the no_application_protocol alert.
    static let applicationProtocol = "http/1.1"

    /// - Throws: `TLSError` when `tls` cannot be used (a certificate or key that does not load).
    init(
        endpoints: [EtcdEndpoint],
        tls: TLSConfiguration?,
        loops: EtcdEventLoops,
        connectTimeout: TimeAmount,
        logger: Logger
    ) throws {
        self.endpoints = endpoints
        self.plain = PlainTCPTransport()
        if var tls {
            tls.applicationProtocols = [Self.applicationProtocol]
            self.secure = try TLSTransport(configuration: tls)
        } else {
            self.secure = nil
        }
        self.loops = loops
        self.connectTimeout = connectTimeout
        self.logger = logger
    }

    /// Calls `path` with `request` and decodes the answer, trying each member in turn (from
    /// the last one that answered) while they are unreachable or unavailable. `timeout` bounds
    /// each member's attempt.
    func call<Request: Encodable, Response: Decodable & Sendable>(
        _ path: String,
        _ request: Request,
        as type: Response.Type = Response.self,
        timeout: Duration
    ) async throws -> Response {
        let body = try Self.encode(request)
        return try await self.onSomeMember { endpoint in
            let answer = try await Self.withTimeout(timeout, path: path) {
                // A streaming call (keepalive) answers one line; a unary one, a body.
                let first = NIOLockedValueBox<ByteBuffer?>(nil)
                let body = try await self.exchange(endpoint, path: path, body: body, within: timeout) { line in
                    first.withLockedValue { $0 = $0 ?? line }
                }
                return first.withLockedValue { $0 } ?? body
            }
            return try Self.decode(type, answer, path: path)
        }
    }

    /// Calls the streaming `path` on one member (the first that connects) and hands each
    /// answer to `onAnswer` until the stream ends, the member is lost, or the task is cancelled.
    func stream<Request: Encodable, Response: Decodable & Sendable>(
        _ path: String,
        _ request: Request,
        as type: Response.Type = Response.self,
        onAnswer: @escaping @Sendable (Response) async throws -> Void
    ) async throws {
        let body = try Self.encode(request)
        try await self.onSomeMember { endpoint in
            _ = try await self.exchange(endpoint, path: path, body: body) { line in
                try await onAnswer(try Self.decode(type, line, path: path))
            }
        }
    }

    private func onSomeMember<T>(_ attempt: (EtcdEndpoint) async throws -> T) async throws -> T {
        let first = self.preferred.withLockedValue { $0 }
        var lastError = EtcdError(.unreachable, "no endpoints")
        for offset in self.endpoints.indices {
            let index = (first + offset) % self.endpoints.count
            let endpoint = self.endpoints[index]
            do {
                return try await attempt(endpoint)
            } catch let error as EtcdError where error.triesAnotherMember {
                try Task.checkCancellation()
                // The next call starts with the next member: one that failed is not asked
                // first again (it may be cut off from the others for a long while).
                let next = (index + 1) % self.endpoints.count
                self.preferred.withLockedValue { if $0 == index { $0 = next } }
                self.logger.debug("etcd member failed", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
                lastError = error
            }
        }
        throw lastError
    }

    /// One POST on its own connection. Each line of the answer (one JSON object) goes to
    /// `onLine` as it comes; a last one without a newline too, and it is also returned.
    private func exchange(
        _ endpoint: EtcdEndpoint,
        path: String,
        body: ByteBuffer,
        within timeout: Duration? = nil,
        onLine: @escaping @Sendable (ByteBuffer) async throws -> Void
    ) async throws -> ByteBuffer {
        // A connect cannot be cancelled: it must not outlast the call's own timeout.
        var connectTimeout = self.connectTimeout
        if let timeout {
            connectTimeout = min(connectTimeout, .nanoseconds(max(1, Int64(timeout / .nanoseconds(1)))))
        }
        guard let transport = endpoint.secure ? self.secure : self.plain else {
            throw EtcdError(.invalidConfiguration, "endpoint \(endpoint): https needs a TLS configuration")
        }
        let group = try self.loops.enter()
        defer { self.loops.leave() }
        let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(connectTimeout)
                .connect(host: endpoint.host, port: endpoint.port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try transport.configure(channel, serverHostname: endpoint.host)
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(
                            wrappingChannelSynchronously: channel
                        )
                    }
                }
        } catch {
            throw EtcdError(.unreachable, "\(endpoint): \(error)", cause: error)
        }
        guard self.loops.opened(channel.channel) else {
            try? await channel.channel.close()
            throw EtcdError(.shutDown, "the election was shut down")
        }
        defer { self.loops.closed(channel.channel) }
        do {
            return try await channel.executeThenClose { inbound, outbound in
                var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
                let host = endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host
                head.headers.add(name: "Host", value: "\(host):\(endpoint.port)")
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: "\(body.readableBytes)")
                do {
                    try await outbound.write(.head(head))
                    try await outbound.write(.body(.byteBuffer(body)))
                    try await outbound.write(.end(nil))
                } catch {
                    // The connection ended before the request went out: what ended it (a TLS
                    // alert, such as "certificate required") waits on the inbound side.
                    for try await _ in inbound {}
                    throw error
                }

                var status: HTTPResponseStatus?
                var pending = ByteBuffer()
                for try await part in inbound {
                    switch part {
                    case .head(let head):
                        status = head.status
                    case .body(var chunk):
                        pending.writeBuffer(&chunk)
                        // A streamed answer: one JSON object per line.
                        while status == .ok, let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n"))
                        {
                            let length = newline - pending.readerIndex
                            if let line = pending.readSlice(length: length), line.readableBytes > 0 {
                                try await onLine(line)
                            }
                            pending.moveReaderIndex(forwardBy: 1)
                        }
                        pending.discardReadBytes()
                    case .end:
                        guard let status else { throw EtcdError(.badAnswer, "no status line") }
                        if status != .ok {
                            throw Self.serverError(pending, status: status)
                        }
                        // The last object may come without its newline (an error ending a
                        // stream does; so does a plain body).
                        if pending.readableBytes > 0 {
                            try await onLine(pending)
                        }
                        return pending
                    }
                }
                throw EtcdError(.unreachable, "\(endpoint) closed the connection before answering \(path)")
            }
        } catch let error as EtcdError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw EtcdError(.unreachable, "\(endpoint): \(error)", cause: error)
        }
    }

    private static func withTimeout<T: Sendable>(
        _ timeout: Duration,
        path: String,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let result = try await group.next() ?? nil else {
                throw EtcdError(.unreachable, "\(path) got no answer within \(timeout)")
            }
            return result
        }
    }

    // MARK: - JSON

    private static func encode(_ value: some Encodable) throws -> ByteBuffer {
        ByteBuffer(bytes: try JSONEncoder().encode(value))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ buffer: ByteBuffer, path: String) throws -> T {
        let data = Data(buffer.readableBytesView)
        if let failure = try? JSONDecoder().decode(GatewayStreamError.self, from: data), let error = failure.error {
            throw EtcdError(.server, error.message ?? "unknown", status: error.grpcCode ?? 2)
        }
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw EtcdError(.badAnswer, "\(path): \(error)", cause: error)
        }
    }

    private static func serverError(_ buffer: ByteBuffer, status: HTTPResponseStatus) -> EtcdError {
        let data = Data(buffer.readableBytesView)
        // A unary call's error is flat; a streaming call's, nested (and it can come with a
        // status other than 200 when nothing was streamed before it).
        if let failure = try? JSONDecoder().decode(GatewayUnaryError.self, from: data), failure.code != nil {
            return EtcdError(
                .server,
                failure.message ?? failure.error ?? "HTTP \(status.code)",
                status: failure.code ?? 2
            )
        }
        if let failure = try? JSONDecoder().decode(GatewayStreamError.self, from: data), let error = failure.error {
            return EtcdError(.server, error.message ?? "HTTP \(status.code)", status: error.grpcCode ?? 2)
        }
        // 503 and 504 without a readable body: the member cannot serve now.
        let code = status.code == 503 || status.code == 504 ? EtcdError.Status.unavailable : 2
        return EtcdError(.server, "HTTP \(status.code) \(status.reasonPhrase)", status: code)
    }
}

/// A unary call's error: `{"error": "...", "code": 14, "message": "..."}`.
struct GatewayUnaryError: Decodable {
    var error: String?
    var code: Int?
    var message: String?
}

/// An error inside a stream: `{"error": {"grpc_code": 14, "http_code": 503, "message": "..."}}`.
struct GatewayStreamError: Decodable {
    struct Detail: Decodable {
        var grpcCode: Int?
        var message: String?

        enum CodingKeys: String, CodingKey {
            case grpcCode = "grpc_code"
            case message
        }
    }

    var error: Detail?
}
