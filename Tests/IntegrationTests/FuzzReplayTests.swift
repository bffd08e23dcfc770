import Foundation
import SMSGTestSupport
import Testing

/// Every input kept in Fuzz/corpus (the seeds, and each crash input once fixed) goes through
/// the fuzz target again in a normal build: a regression test of the decoder and the state
/// machine.
@Suite("Fuzz corpus replay")
struct FuzzReplayTests {
    @Test("every saved fuzz input runs through the decoder and the state machine without a trap")
    func replay() async throws {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let executable = bundle.appendingPathComponent("smsg-fuzz").path
        let corpus = "\(BenchServerTests.repositoryRoot)/Fuzz/corpus"
        let count = try FileManager.default.contentsOfDirectory(atPath: corpus).filter { !$0.hasPrefix(".") }.count
        #expect(count >= 9)
        let replay = try ChildProcess(executable, [corpus])
        #expect(await replay.waitForExit() == 0, "\(replay.output)")
        #expect(replay.output.contains("replayed \(count) inputs"))
    }
}
