import ArgumentParser

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark server and client (the workloads of the shared bench tool).",
        subcommands: [BenchServer.self, BenchClient.self, BenchPush.self, BenchDispatch.self]
    )
}
