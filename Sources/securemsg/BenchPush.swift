import ArgumentParser
import Messaging
import NIOCore
import SecureTransport

/// `securemsg bench push`: one client sends a fixed amount of DATA as fast as the server lets
/// it (flow control decides), then reports one JSON line.
struct BenchPush: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push",
        abstract: "Push a fixed amount of DATA at a server and report the rate (one JSON line)."
    )

    @OptionGroup var connection: ClientConnectionOptions

    @Option(help: "Total DATA body bytes to send.")
    var bytes: Int = 1 << 30

    @Option(help: "Body bytes per message.")
    var size: Int = 65_536

    func validate() throws {
        guard self.size > 0, self.bytes > 0 else { throw ValidationError("--bytes and --size must be positive") }
    }

    func run() async throws {
        let address = try self.connection.address
        let transport = try self.connection.makeTransport()
        let client = try await SecureClient.connect(
            host: address.host,
            port: address.port,
            transport: transport,
            serverHostname: "localhost",
            configuration: ClientConfiguration(nodeID: "bench-push")
        )
        let body = ByteBuffer(repeating: 0x42, count: self.size)
        let count = (self.bytes + self.size - 1) / self.size
        let clock = ContinuousClock()
        let started = clock.now
        for _ in 0..<count {
            try await client.send(topic: "push", body: body)
        }
        // A request after the last message returns once the server has taken everything before it.
        _ = try await client.request(topic: "done", body: ByteBuffer(), timeout: .seconds(600))
        let seconds =
            Double((clock.now - started).components.attoseconds) / 1e18
            + Double((clock.now - started).components.seconds)
        let megabytes = Double(count * self.size) / 1e6
        await client.close()
        print(
            #"{"workload":"push","tls":\#(!self.connection.plaintext),"messages":\#(count),"size":\#(self.size),"#
                + #""duration_s":\#(seconds),"mb_per_s":\#(megabytes / seconds),"slow_downs":\#(client.session.slowDownsReceived)}"#
        )
    }
}
