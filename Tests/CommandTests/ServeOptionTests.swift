import Testing

@testable import securemsg

@Suite("collaborator --serve")
struct ServeOptionTests {
    @Test("TOPIC[:MS] lists read back, and bad ones are refused with what is wrong")
    func parsing() throws {
        let served = try CollaboratorCommand.ServedTopic.list("work:20,resize,jobs.>:0")
        #expect(served.map(\.topic) == ["work", "resize", "jobs.>"])
        #expect(served.map(\.cost) == [.milliseconds(20), .zero, .zero])
        #expect(served.map(\.description).joined(separator: ",") == "work:20,resize,jobs.>")
        for bad in ["", "work:", "work:-1", "work:abc", ",work", "work:99999999"] {
            #expect(throws: (any Error).self, "\(bad)") { try CollaboratorCommand.ServedTopic.list(bad) }
        }
    }
}
