import Histogram
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SecureTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One JSON object, keys in the order given, printed on one line of stdout.
struct BenchResult {
    enum Value {
        case int(Int)
        case double(Double)
        case bool(Bool)
        case string(String)
    }

    var fields: [(String, Value)] = []

    mutating func add(_ key: String, _ value: Value) {
        self.fields.append((key, value))
    }

    var json: String {
        let parts = self.fields.map { key, value -> String in
            let text: String
            switch value {
            case .int(let number): text = String(number)
            case .double(let number): text = number.isFinite ? Self.format(number) : "null"
            case .bool(let flag): text = flag ? "true" : "false"
            case .string(let string): text = Self.quote(string)
            }
            return "\(Self.quote(key)):\(text)"
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    func print() {
        Swift.print(self.json)
        fflush(nil)
    }

    /// Three decimals, as the peers print.
    static func format(_ number: Double) -> String {
        let scaled = (number * 1000).rounded()
        let sign = scaled < 0 ? "-" : ""
        let magnitude = Int(abs(scaled))
        let fraction = String(magnitude % 1000)
        return "\(sign)\(magnitude / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }

    static func quote(_ string: String) -> String {
        var out = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

func benchLog(_ text: String) {
    var line = "[bench client] \(text)\n"
    line.withUTF8 { bytes in
        _ = write(2, bytes.baseAddress, bytes.count)
    }
}

/// The workloads, against one server.
struct BenchRun {
    static let topic = "e"

    var host: String
    var port: Int
    var serverName: String
    var group: MultiThreadedEventLoopGroup
    var transport: any MessagingTransport
    var tls: Bool
    var mtls: Bool
    var warmup: Double
    var duration: Double

    private func connect(
        nodeID: String,
        receiver: SecureMessagingServer.ReceiverFactory? = nil
    ) async throws -> SecureClient {
        var configuration = ClientConfiguration(nodeID: nodeID)
        configuration.connectTimeout = .seconds(10)
        return try await SecureClient.connect(
            host: self.host,
            port: self.port,
            transport: self.transport,
            serverHostname: self.serverName,
            configuration: configuration,
            group: self.group,
            receiver: receiver
        )
    }

    private func window(from start: UInt64) -> (start: UInt64, end: UInt64) {
        let measureStart = start + UInt64(self.warmup * 1e9)
        return (measureStart, measureStart + UInt64(self.duration * 1e9))
    }

    private func commonFields(into result: inout BenchResult, seconds: Double, samples: Int, errors: Int) {
        result.add("tls", .bool(self.tls))
        result.add("mtls", .bool(self.mtls))
        result.add("duration_s", .double(seconds))
        result.add("samples", .int(samples))
        result.add("errors", .int(errors))
    }

    // MARK: - echo and bulk

    /// `connections` sessions each keep `window` messages in flight; every echo is timed and
    /// replaced by a new message.
    func stream(name: String, connections: Int, window: Int, size: Int) async throws -> BenchResult {
        let body = ByteBuffer(repeating: 0x61, count: size)
        let receivers = NIOLockedValueBox<[NIOLoopBound<StreamReceiver>]>([])
        var clients: [SecureClient] = []
        for index in 0..<connections {
            let client = try await self.connect(nodeID: "bench-\(index)") { session in
                let receiver = StreamReceiver(body: body, window: window)
                receivers.withLockedValue {
                    $0.append(NIOLoopBound(receiver, eventLoop: session.channel.eventLoop))
                }
                return receiver
            }
            clients.append(client)
        }
        benchLog("\(name): \(connections) sessions open")
        let bound = receivers.withLockedValue { $0 }
        let (measureStart, measureEnd) = self.window(from: benchNanos())
        for receiver in bound {
            receiver.eventLoop.execute { receiver.value.start(measureStart: measureStart, measureEnd: measureEnd) }
        }
        let now = benchNanos()
        if measureEnd + 20_000_000 > now {
            try await Task.sleep(for: .nanoseconds(Int(measureEnd + 20_000_000 - now)))
        }
        var total = makeLatencyHistogram()
        var count = 0
        for receiver in bound {
            let (histogram, received) = try await receiver.eventLoop.submit {
                (receiver.value.histogram, receiver.value.received)
            }.get()
            total.add(histogram)
            count += received
        }
        let errors = clients.filter { $0.session.currentState == .closed }.count
        for client in clients {
            client.session.channel.close(promise: nil)
        }
        for client in clients {
            await client.session.waitUntilClosed()
        }
        let seconds = Double(measureEnd - measureStart) / 1e9
        let rate = Double(count) / seconds
        var result = BenchResult()
        result.add("workload", .string(name))
        result.add("msgs_per_s", .double(rate))
        result.add("mb_per_s", .double(rate * Double(size) / 1e6))
        result.add("rtt_p50_us", .double(Double(total.valueAtPercentile(50)) / 1e3))
        result.add("rtt_p99_us", .double(Double(total.valueAtPercentile(99)) / 1e3))
        result.add("rtt_p999_us", .double(Double(total.valueAtPercentile(99.9)) / 1e3))
        result.add("connections", .int(connections))
        result.add("window", .int(window))
        result.add("size", .int(size))
        self.commonFields(into: &result, seconds: seconds, samples: count, errors: errors)
        return result
    }

    // MARK: - handshake and resume

    /// `loops` concurrent loops of: connect, TLS handshake, HELLO exchange, one request and
    /// its answer (the latency runs from the connect to the answer), close.
    func handshakes(name: String, loops: Int, size: Int) async throws -> BenchResult {
        let body = ByteBuffer(repeating: 0x61, count: size)
        let (measureStart, measureEnd) = self.window(from: benchNanos())
        let stats = try await withThrowingTaskGroup(of: LoopStats.self) { tasks in
            for index in 0..<loops {
                tasks.addTask {
                    try await self.handshakeLoop(
                        nodeID: "bench-hs-\(index)",
                        body: body,
                        measureStart: measureStart,
                        measureEnd: measureEnd
                    )
                }
            }
            var all: [LoopStats] = []
            for try await stats in tasks {
                all.append(stats)
            }
            return all
        }
        var total = makeLatencyHistogram()
        var completed = 0
        var resumed = 0
        var errors = 0
        for loop in stats {
            total.add(loop.histogram)
            completed += loop.completed
            resumed += loop.resumed
            errors += loop.errors
            if let error = loop.lastError {
                benchLog("\(name): \(loop.errors) errors in a loop, last: \(error)")
            }
        }
        let seconds = Double(measureEnd - measureStart) / 1e9
        var result = BenchResult()
        result.add("workload", .string(name))
        result.add("handshakes_per_s", .double(Double(completed) / seconds))
        result.add("p50_ms", .double(Double(total.valueAtPercentile(50)) / 1e6))
        result.add("p99_ms", .double(Double(total.valueAtPercentile(99)) / 1e6))
        result.add("connections", .int(loops))
        self.commonFields(into: &result, seconds: seconds, samples: completed, errors: errors)
        result.add("resumed", .int(resumed))
        return result
    }

    private struct LoopStats: Sendable {
        var histogram = makeLatencyHistogram()
        var completed = 0
        var resumed = 0
        var errors = 0
        var lastError: String?
    }

    private func handshakeLoop(
        nodeID: String,
        body: ByteBuffer,
        measureStart: UInt64,
        measureEnd: UInt64
    ) async throws -> LoopStats {
        var stats = LoopStats()
        while true {
            let start = benchNanos()
            if start >= measureEnd { break }
            do {
                let client = try await self.connect(nodeID: nodeID)
                _ = try await client.request(topic: Self.topic, body: body, timeout: .seconds(10))
                let end = benchNanos()
                if start >= measureStart, end < measureEnd {
                    _ = stats.histogram.record(end - start)
                    stats.completed += 1
                    if client.session.tlsHandshake?.sessionReused == true {
                        stats.resumed += 1
                    }
                }
                // As the peers do: close_notify and close, no protocol goodbye.
                client.session.channel.close(promise: nil)
                await client.session.waitUntilClosed()
            } catch {
                stats.errors += 1
                stats.lastError = "\(error)"
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        return stats
    }

    // MARK: - idle

    struct IdleSessions {
        var result: BenchResult
        var clients: [SecureClient]

        func close() async {
            for client in self.clients {
                client.session.channel.close(promise: nil)
            }
            for client in self.clients {
                await client.session.waitUntilClosed()
            }
        }
    }

    /// Opens `count` sessions, at most `parallel` at a time, with one request each.
    func openIdle(count: Int, parallel: Int, size: Int) async throws -> IdleSessions {
        let body = ByteBuffer(repeating: 0x61, count: size)
        let started = benchNanos()
        var clients: [SecureClient] = []
        clients.reserveCapacity(count)
        var failed = 0
        var lastError: String?
        var next = 0
        while next < count {
            let batch = min(parallel, count - next)
            let opened = await withTaskGroup(of: Result<SecureClient, any Error>.self) { tasks in
                for index in next..<(next + batch) {
                    tasks.addTask {
                        do {
                            let client = try await self.connect(nodeID: "bench-idle-\(index)")
                            _ = try await client.request(topic: Self.topic, body: body, timeout: .seconds(30))
                            return .success(client)
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                var results: [Result<SecureClient, any Error>] = []
                for await result in tasks {
                    results.append(result)
                }
                return results
            }
            for result in opened {
                switch result {
                case .success(let client): clients.append(client)
                case .failure(let error):
                    failed += 1
                    lastError = "\(error)"
                }
            }
            next += batch
        }
        if let lastError {
            benchLog("idle: \(failed) failed, last: \(lastError)")
        }
        let open = clients.filter { $0.session.currentState == .open }.count
        var result = BenchResult()
        result.add("workload", .string("idle"))
        result.add("connections", .int(open))
        result.add("requested", .int(count))
        result.add("failed", .int(failed))
        result.add("open_s", .double(Double(benchNanos() - started) / 1e9))
        result.add("tls", .bool(self.tls))
        result.add("mtls", .bool(self.mtls))
        return IdleSessions(result: result, clients: clients)
    }
}

/// Keeps `window` messages in flight on one session, timing each echo (echoes come back in
/// order, so the send times wait in a FIFO). Lives on the session's event loop.
final class StreamReceiver: MessageReceiver {
    let body: ByteBuffer
    let window: Int
    private var session: LoopSession?
    private var sendTimes: CircularBuffer<UInt64>
    private(set) var histogram = makeLatencyHistogram()
    private(set) var received = 0
    private var measureStart: UInt64 = .max
    private var measureEnd: UInt64 = .max

    init(body: ByteBuffer, window: Int) {
        self.body = body
        self.window = window
        self.sendTimes = CircularBuffer(initialCapacity: max(16, window * 2))
    }

    func sessionOpened(_ session: LoopSession) {
        self.session = session
    }

    func start(measureStart: UInt64, measureEnd: UInt64) {
        self.measureStart = measureStart
        self.measureEnd = measureEnd
        guard let session = self.session else { return }
        for _ in 0..<self.window {
            self.send(session)
        }
    }

    @inline(__always)
    private func send(_ session: LoopSession) {
        self.sendTimes.append(benchNanos())
        session.send(topic: BenchRun.topic, body: self.body)
    }

    func received(_ message: Message, session: LoopSession) {
        let now = benchNanos()
        guard let sent = self.sendTimes.popFirst() else { return }
        if now >= self.measureStart, now < self.measureEnd {
            _ = self.histogram.record(now &- sent)
            self.received += 1
        }
        if now < self.measureEnd {
            self.send(session)
        }
    }
}
