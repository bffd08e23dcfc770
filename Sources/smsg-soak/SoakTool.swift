import ArgumentParser

/// `smsg-soak`: the long-running hardening tools, kept out of the user-facing `securemsg`.
@main
struct SoakTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "smsg-soak",
        abstract: "Soak and failover load for smsg: an orchestrator and the processes it starts.",
        subcommands: [Soak.self, SoakLeader.self, SoakSwarm.self, FailoverSwarm.self]
    )
}
