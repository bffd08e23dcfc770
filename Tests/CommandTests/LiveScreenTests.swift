import Testing

@testable import securemsg

/// What `securemsg leader` shows its operator on a terminal.
@Suite("The leader's live screen")
struct LiveScreenTests {
    @Test("round trips read in milliseconds, whatever their size")
    func roundTripUnits() {
        // 839 µs once read "839 ms" (microseconds labelled as milliseconds).
        #expect(MembershipTable.describe(roundTrip: .microseconds(839)) == "0.84 ms")
        #expect(MembershipTable.describe(roundTrip: .milliseconds(12) + .microseconds(340)) == "12.3 ms")
        // The seconds count too (they were dropped).
        #expect(MembershipTable.describe(roundTrip: .seconds(1) + .milliseconds(250)) == "1250 ms")
        #expect(MembershipTable.describe(roundTrip: .zero) == "0.00 ms")
    }

    @Test("on a terminal the listening line stays on top and the latest lines under the table")
    func keepsHeaderAndRecentLines() {
        let screen = LiveScreen(interactive: true)
        screen.setHeader("listening on 127.0.0.1:7443")
        for number in 1...(LiveScreen.recentLines + 2) {
            screen.say("line \(number)")
        }
        let text = screen.render(table: "TABLE\n")
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first == "\u{1B}[H\u{1B}[2Jlistening on 127.0.0.1:7443")
        #expect(lines.contains("TABLE"))
        let recent = lines.filter { $0.hasPrefix("line ") }
        #expect(recent == (3...(LiveScreen.recentLines + 2)).map { "line \($0)" })
        #expect(lines.firstIndex(of: "TABLE")! < lines.firstIndex(of: "line 3")!)
    }
}
