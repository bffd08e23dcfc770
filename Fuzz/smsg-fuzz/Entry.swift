#if FUZZING
/// libFuzzer's entry point (built with `scripts/fuzz.sh`: `-sanitize=fuzzer,address`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    FuzzTarget.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>, Int) -> CInt

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: FuzzCallback
) -> CInt

/// SwiftPM links an executable's `main` to `<module>_main`: hand over to libFuzzer's driver.
@_cdecl("smsg_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runFuzzerDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) }
}
#else
import Foundation

/// Without the fuzzer: runs every file named on the command line (or in the directories
/// named) through the fuzz target once, so a saved corpus and every crash input are
/// regression tests in a normal build.
@main
enum Replay {
    static func main() throws {
        var files: [String] = []
        for argument in CommandLine.arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
                throw ReplayError(message: "no such file or directory: \(argument)")
            }
            if isDirectory.boolValue {
                let names = try FileManager.default.contentsOfDirectory(atPath: argument).sorted()
                files += names.filter { !$0.hasPrefix(".") }.map { "\(argument)/\($0)" }
            } else {
                files.append(argument)
            }
        }
        for file in files {
            let data = try Data(contentsOf: URL(fileURLWithPath: file))
            data.withUnsafeBytes { FuzzTarget.run($0) }
        }
        print("replayed \(files.count) inputs")
    }
}

struct ReplayError: Error, CustomStringConvertible {
    var message: String
    var description: String { self.message }
}
#endif
