import Testing

@testable import Messaging

/// Decodes `json` as a HELLO and returns the violation it raised, or `nil` when it was accepted.
private func violation(_ json: String, expectSessionID: Bool = false) -> ProtocolViolation? {
    violation(bytes: Array(json.utf8), expectSessionID: expectSessionID)
}

private func violation(bytes: [UInt8], expectSessionID: Bool = false) -> ProtocolViolation? {
    do {
        _ = try Hello.decode(bytes, expectSessionID: expectSessionID)
        return nil
    } catch {
        return error
    }
}

/// A valid client HELLO with `extra` (`,"key":value…`) appended inside the object.
private func helloJSON(_ extra: String = "") -> String {
    #"{"protocol":"smsg","version":1,"node_id":"collab-1","role":"client""# + extra + "}"
}

/// A HELLO cut off just inside the value of `role`.
private let rolePrefix: [UInt8] = Array(#"{"protocol":"smsg","version":1,"node_id":"a","role":""#.utf8)

/// Parses `json`, returning the error or `nil`.
private func parseError(_ json: String) -> JSONParseError? {
    parseError(bytes: Array(json.utf8))
}

private func parseError(bytes: [UInt8]) -> JSONParseError? {
    do {
        _ = try JSONValue.parse(bytes)
        return nil
    } catch {
        return error
    }
}

@Suite("HELLO")
struct HelloTests {
    @Test("round trip with every optional key")
    func roundTripAllKeys() throws {
        let hello = Hello(
            nodeID: "a.b_c:d@e-f",
            role: "server \"main\"\n",
            heartbeatMilliseconds: 2_500,
            maxFrame: 1_048_576,
            metadata: ["region": "eu-1", "note": "ünïcødé 😀", "quote": "\"\\"],
            sessionID: "s-42"
        )
        let decoded = try Hello.decode(hello.encoded(), expectSessionID: true)
        #expect(decoded == hello)
    }

    @Test("round trip with only the required keys")
    func roundTripMinimal() throws {
        let hello = Hello(nodeID: "n", role: "client")
        let encoded = hello.encoded()
        #expect(
            String(decoding: encoded, as: UTF8.self)
                == #"{"protocol":"smsg","version":1,"node_id":"n","role":"client"}"#
        )
        #expect(try Hello.decode(encoded, expectSessionID: false) == hello)
    }

    @Test("encoding puts protocol, version, node_id and role first")
    func encodingOrder() {
        let hello = Hello(nodeID: "n", role: "r", heartbeatMilliseconds: 5, maxFrame: 65_536, sessionID: "x")
        let text = String(decoding: hello.encoded(), as: UTF8.self)
        #expect(
            text == #"{"protocol":"smsg","version":1,"node_id":"n","role":"r","heartbeat_ms":5,"max_frame":65536,"#
                + #""session_id":"x"}"#
        )
    }

    @Test("a valid HELLO decodes")
    func decodesValid() throws {
        let hello = try Hello.decode(Array(helloJSON().utf8), expectSessionID: false)
        #expect(hello == Hello(nodeID: "collab-1", role: "client"))
        #expect(hello.metadata.isEmpty)
        #expect(hello.heartbeatMilliseconds == nil)
        #expect(hello.maxFrame == nil)
        #expect(hello.sessionID == nil)
    }

    @Test(
        "checks happen in the order PROTOCOL.md gives",
        arguments: [
            // Not a JSON object.
            ("", ErrorCode.protocolError),
            ("not json", .protocolError),
            ("[1,2]", .protocolError),
            (#""smsg""#, .protocolError),
            ("null", .protocolError),
            (helloJSON() + "x", .protocolError),
            (helloJSON() + "{}", .protocolError),
            // protocol before version.
            (#"{"version":1,"node_id":"a","role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg2","version":2}"#, .protocolError),
            (#"{"protocol":null,"version":1,"node_id":"a","role":"r"}"#, .protocolError),
            (#"{"protocol":"SMSG","version":1,"node_id":"a","role":"r"}"#, .protocolError),
            // version before the other keys.
            (#"{"protocol":"smsg","version":2}"#, .unsupportedVersion),
            (#"{"protocol":"smsg","version":0,"node_id":null}"#, .unsupportedVersion),
            (#"{"protocol":"smsg","version":-1}"#, .unsupportedVersion),
            (#"{"protocol":"smsg","version":-0,"node_id":"a","role":"r"}"#, .unsupportedVersion),
            (#"{"protocol":"smsg","version":123456789012345678901234567890}"#, .unsupportedVersion),
            (#"{"protocol":"smsg","node_id":"a","role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":1.0,"node_id":"a","role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":1e0,"node_id":"a","role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":"1","node_id":"a","role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":null,"node_id":"a","role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":2.0}"#, .protocolError),
            (#"{"protocol":"smsg","version":true}"#, .protocolError),
            // The other keys.
            (#"{"protocol":"smsg","version":1,"role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":1,"node_id":null,"role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":1,"node_id":5,"role":"r"}"#, .protocolError),
            (#"{"protocol":"smsg","version":1,"node_id":"a"}"#, .protocolError),
            (#"{"protocol":"smsg","version":1,"node_id":"a","role":""}"#, .protocolError),
            (#"{"protocol":"smsg","version":1,"node_id":"a","role":null}"#, .protocolError),
            (#"{"protocol":"smsg","version":1,"node_id":"a","role":["r"]}"#, .protocolError),
        ] as [(String, ErrorCode)]
    )
    func rejections(json: String, code: ErrorCode) {
        #expect(violation(json)?.code == code)
    }

    @Test("reasons are the documented ones")
    func reasons() {
        #expect(violation("[]")?.reason == "HELLO is not a JSON object")
        #expect(violation(#"{"version":1}"#)?.reason == #"HELLO protocol must be "smsg""#)
        #expect(violation(#"{"protocol":"smsg","version":"1"}"#)?.reason == "HELLO version must be an integer")
        #expect(violation(#"{"protocol":"smsg","version":2}"#)?.reason == "unsupported version 2")
        #expect(violation(#"{"protocol":"smsg","version":1}"#)?.reason == "HELLO node_id is missing")
        #expect(violation(#"{"protocol":"smsg","version":1,"node_id":"a b"}"#)?.reason == "HELLO node_id is invalid")
        #expect(violation(#"{"protocol":"smsg","version":1,"node_id":"a"}"#)?.reason == "HELLO role is missing")
        #expect(violation(helloJSON(#","heartbeat_ms":0"#))?.reason == "HELLO heartbeat_ms must be a positive integer")
        #expect(
            violation(helloJSON(#","max_frame":1"#))?.reason == "HELLO max_frame must be an integer of at least 65536"
        )
        #expect(violation(helloJSON(#","metadata":{"a":1}"#))?.reason == "HELLO metadata must map strings to strings")
        #expect(violation(helloJSON(), expectSessionID: true)?.reason == "HELLO session_id is missing")
    }

    @Test("reasons are short UTF-8 and never echo large input")
    func reasonsAreBounded() {
        let long = String(repeating: "x", count: 5_000)
        let inputs = [
            "[\"\(long)\"]",
            #"{"protocol":"\#(long)"}"#,
            #"{"protocol":"smsg","version":1\#(String(repeating: "9", count: 5_000))}"#,
            #"{"protocol":"smsg","version":1,"node_id":"\#(long)","role":"r"}"#,
            helloJSON(#","metadata":{"\#(long)":1}"#),
            long,
        ]
        for input in inputs {
            let reason = violation(input)?.reason ?? ""
            #expect((1...1_024).contains(reason.utf8.count))
            #expect(!reason.contains("xxxx"))
            #expect(!reason.contains("9999"))
        }
    }

    @Test(
        "invalid UTF-8 is a PROTOCOL_ERROR",
        arguments: [
            [0xFF],
            [0x7B, 0x22, 0xC0, 0xAF, 0x22, 0x3A, 0x31, 0x7D],  // {"<overlong />":1}
            rolePrefix + [0xED, 0xA0, 0x80, 0x22, 0x7D],  // encoded surrogate U+D800
            rolePrefix + [0xF5, 0x80, 0x80, 0x80, 0x22, 0x7D],  // above U+10FFFF
            rolePrefix + [0xE2, 0x82, 0x22, 0x7D],  // truncated sequence
            rolePrefix + [0x72, 0x22, 0x7D, 0xFF],  // valid HELLO, then a stray byte
        ] as [[UInt8]]
    )
    func invalidUTF8(bytes: [UInt8]) {
        #expect(violation(bytes: bytes)?.code == .protocolError)
    }

    @Test(
        "node_id validity",
        arguments: [
            ("collab-1", true),
            ("a.b_c:d@e-f", true),
            ("A", true),
            ("0123456789", true),
            (String(repeating: "a", count: 128), true),
            (String(repeating: "a", count: 129), false),
            ("", false),
            ("a\n", false),
            ("a\r\n", false),
            ("a b", false),
            (" a", false),
            ("a/b", false),
            ("é", false),
            ("e\u{301}", false),
            ("😀", false),
            ("a\u{0}", false),
        ]
    )
    func nodeIDValidity(id: String, valid: Bool) {
        #expect(Hello.isValidNodeID(id) == valid)
        var json: [UInt8] = Array(#"{"protocol":"smsg","version":1,"node_id":"#.utf8)
        JSONValue.serialize(string: id, into: &json)
        json += Array(#","role":"r"}"#.utf8)
        let result = violation(bytes: json)
        if valid {
            #expect(result == nil)
        } else {
            #expect(result?.code == .protocolError)
        }
    }

    @Test(
        "heartbeat_ms must be a positive integer",
        arguments: ["0", "-1", "-0", "1.5", "1.0", "1e3", #""5""#, "null", "true", "99999999999999999999", "{}"]
    )
    func badHeartbeat(value: String) {
        #expect(violation(helloJSON(#","heartbeat_ms":"# + value))?.code == .protocolError)
    }

    @Test("heartbeat_ms accepts positive integers")
    func goodHeartbeat() throws {
        let one = try Hello.decode(Array(helloJSON(#","heartbeat_ms":1"#).utf8), expectSessionID: false)
        #expect(one.heartbeatMilliseconds == 1)
        let big = try Hello.decode(Array(helloJSON(#","heartbeat_ms":30000"#).utf8), expectSessionID: false)
        #expect(big.heartbeatMilliseconds == 30_000)
    }

    @Test(
        "max_frame must be an integer of at least 65536",
        arguments: ["65535", "0", "-65536", "65536.0", "6.5536e4", #""65536""#, "null", "-99999999999999999999"]
    )
    func badMaxFrame(value: String) {
        #expect(violation(helloJSON(#","max_frame":"# + value))?.code == .protocolError)
    }

    @Test("max_frame accepts 65536 and more")
    func goodMaxFrame() throws {
        let minimum = try Hello.decode(Array(helloJSON(#","max_frame":65536"#).utf8), expectSessionID: false)
        #expect(minimum.maxFrame == 65_536)
        let mebibyte = try Hello.decode(Array(helloJSON(#","max_frame":1048576"#).utf8), expectSessionID: false)
        #expect(mebibyte.maxFrame == 1_048_576)
        let huge = try Hello.decode(
            Array(helloJSON(#","max_frame":99999999999999999999"#).utf8),
            expectSessionID: false
        )
        #expect(huge.maxFrame == Int.max)
    }

    @Test(
        "metadata must map strings to strings",
        arguments: [#"{"a":1}"#, #"{"a":"b","c":null}"#, #"{"a":{"b":"c"}}"#, #"["a"]"#, #""a""#, "null"]
    )
    func badMetadata(value: String) {
        #expect(violation(helloJSON(#","metadata":"# + value))?.code == .protocolError)
    }

    @Test("metadata decodes")
    func goodMetadata() throws {
        let empty = try Hello.decode(Array(helloJSON(#","metadata":{}"#).utf8), expectSessionID: false)
        #expect(empty.metadata.isEmpty)
        let json = helloJSON(#","metadata":{"a":"1","b":"","a":"2"}"#)
        let hello = try Hello.decode(Array(json.utf8), expectSessionID: false)
        #expect(hello.metadata == ["a": "2", "b": ""])
    }

    @Test("unknown keys are ignored")
    func unknownKeys() throws {
        let json = helloJSON(#","future":{"x":[1,2,null]},"extra":null,"z":1.5"#)
        #expect(try Hello.decode(Array(json.utf8), expectSessionID: false) == Hello(nodeID: "collab-1", role: "client"))
    }

    @Test("session_id is required when expected")
    func sessionIDRequired() throws {
        #expect(violation(helloJSON(), expectSessionID: true)?.code == .protocolError)
        for bad in [#""""#, "null", "1", #"["s"]"#] {
            #expect(violation(helloJSON(#","session_id":"# + bad), expectSessionID: true)?.code == .protocolError)
        }
        let hello = try Hello.decode(Array(helloJSON(#","session_id":"s1""#).utf8), expectSessionID: true)
        #expect(hello.sessionID == "s1")
    }

    @Test("session_id is ignored when not expected")
    func sessionIDIgnored() throws {
        for value in [#""s1""#, #""""#, "null", "1"] {
            let hello = try Hello.decode(Array(helloJSON(#","session_id":"# + value).utf8), expectSessionID: false)
            #expect(hello.sessionID == nil)
        }
    }

    @Test("surrounding whitespace is allowed")
    func whitespace() {
        #expect(violation(" \t\r\n" + helloJSON() + "\n") == nil)
    }
}

@Suite("JSONValue")
struct JSONValueTests {
    @Test(
        "rejects what RFC 8259 does not allow",
        arguments: [
            "", " ", "01", "-01", "00", "+1", ".5", "1.", "1e", "1e+", "1E-", "-", "--1", "1.e5", "0x10",
            "NaN", "Infinity", "-Infinity", "nan", "[1,]", #"{"a":1,}"#, "[,1]", #"{,}"#, "[1 2]",
            #"{"a" 1}"#, #"{"a":}"#, "{a:1}", "{'a':1}", "['a']", "// c\n1", "/* c */ 1", "1 // c",
            "[1]]", "1 2", "[1", "{", #"{"a":1"#, #""abc"#, "tru", "truex", "nul", "True", "undefined",
            #""\x""#, #""\u12""#, #""\u12G4""#, #""\U0041""#, #""\'""#, #""\ud83d""#, #""\ud83dx""#,
            #""\ud83d\u0041""#, #""\ude00""#, #""\ude00\ud83d""#, #""\ud83d\ud83d""#, "\"\t\"", "\"\n\"",
            "\"\u{1}\"", "\u{feff}1", "\u{a0}1", "1\u{0}",
        ]
    )
    func rejects(json: String) {
        #expect(parseError(json) != nil)
    }

    @Test(
        "rejects invalid UTF-8",
        arguments: [
            [0x22, 0xC0, 0x80, 0x22],  // overlong NUL
            [0x22, 0xC1, 0xBF, 0x22],  // overlong
            [0x22, 0xE0, 0x80, 0xAF, 0x22],  // overlong
            [0x22, 0xF0, 0x80, 0x80, 0xAF, 0x22],  // overlong
            [0x22, 0xED, 0xA0, 0x80, 0x22],  // U+D800
            [0x22, 0xED, 0xBF, 0xBF, 0x22],  // U+DFFF
            [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],  // U+110000
            [0x22, 0xF5, 0x80, 0x80, 0x80, 0x22],
            [0x22, 0xFF, 0x22],
            [0x22, 0x80, 0x22],  // lone continuation
            [0x22, 0xC3, 0x22],  // truncated
            [0x22, 0xE2, 0x82, 0x22],  // truncated
            [0x22, 0xC3],  // truncated at the end
            [0xC3, 0xA9],  // outside a string
        ] as [[UInt8]]
    )
    func rejectsInvalidUTF8(bytes: [UInt8]) {
        #expect(parseError(bytes: bytes) != nil)
    }

    @Test("accepts valid UTF-8 at the edges")
    func acceptsValidUTF8() throws {
        let bytes: [UInt8] = [
            0x22, 0xC2, 0x80, 0xDF, 0xBF, 0xE0, 0xA0, 0x80, 0xED, 0x9F, 0xBF, 0xEE, 0x80, 0x80, 0xEF, 0xBF, 0xBF,
            0xF0, 0x90, 0x80, 0x80, 0xF4, 0x8F, 0xBF, 0xBF, 0x22,
        ]
        #expect(
            try JSONValue.parse(bytes) == .string("\u{80}\u{7FF}\u{800}\u{D7FF}\u{E000}\u{FFFF}\u{10000}\u{10FFFF}")
        )
    }

    @Test(
        "integers and numbers",
        arguments: [
            ("0", JSONValue.integer(0)),
            ("-0", .integer(0)),
            ("1", .integer(1)),
            ("-1", .integer(-1)),
            ("9223372036854775807", .integer(Int64.max)),
            ("-9223372036854775808", .integer(Int64.min)),
            ("9223372036854775808", .number("9223372036854775808")),
            ("-9223372036854775809", .number("-9223372036854775809")),
            ("123456789012345678901234567890", .number("123456789012345678901234567890")),
            ("1.0", .number("1.0")),
            ("1e0", .number("1e0")),
            ("10E2", .number("10E2")),
            ("-0.0", .number("-0.0")),
            ("1.5e-3", .number("1.5e-3")),
            ("2E+10", .number("2E+10")),
            ("0e0", .number("0e0")),
        ]
    )
    func numbers(json: String, expected: JSONValue) throws {
        #expect(try JSONValue.parse(Array(json.utf8)) == expected)
    }

    @Test("literals, containers and whitespace")
    func structures() throws {
        let json = " \t\r\n{\"a\" : [ true , false , null , {} , [] , \"\" ] , \"b\":{\"c\":-2}}\n"
        let expected = JSONValue.object([
            "a": .array([.bool(true), .bool(false), .null, .object([:]), .array([]), .string("")]),
            "b": .object(["c": .integer(-2)]),
        ])
        #expect(try JSONValue.parse(Array(json.utf8)) == expected)
    }

    @Test("the last of duplicate keys wins")
    func duplicateKeys() throws {
        #expect(
            try JSONValue.parse(Array(#"{"a":1,"b":2,"a":3}"#.utf8)) == .object(["a": .integer(3), "b": .integer(2)])
        )
    }

    @Test(
        "escapes",
        arguments: [
            (#""\"\\\/\b\f\n\r\t""#, "\"\\/\u{8}\u{C}\n\r\t"),
            (#""\u0041\u00e9\u20AC""#, "Aé€"),
            (#""\u0000""#, "\u{0}"),
            (#""\ud83d\ude00""#, "😀"),
            (#""\uD83D\uDE00x""#, "😀x"),
            (#""a\ud800\udc00b""#, "a\u{10000}b"),
            (#""\udbff\udfff""#, "\u{10FFFF}"),
            (#""é😀 plain""#, "é😀 plain"),
        ]
    )
    func escapes(json: String, expected: String) throws {
        #expect(try JSONValue.parse(Array(json.utf8)) == .string(expected))
    }

    @Test("nesting up to 64 levels is allowed, deeper is not")
    func depthLimit() throws {
        let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(parseError(ok) == nil)
        let tooDeep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect(parseError(tooDeep) != nil)
        let objects = String(repeating: #"{"a":"#, count: 64) + "1" + String(repeating: "}", count: 64)
        #expect(parseError(objects) == nil)
        let tooDeepObjects = String(repeating: #"{"a":"#, count: 65) + "1" + String(repeating: "}", count: 65)
        #expect(parseError(tooDeepObjects) != nil)
        let mixed = String(repeating: #"[{"a":"#, count: 33) + "1" + String(repeating: "}]", count: 33)
        #expect(parseError(mixed) != nil)
        let huge = String(repeating: "[", count: 100_000)
        #expect(parseError(huge) != nil)
    }

    @Test("error offsets point at the problem")
    func errorOffsets() {
        #expect(parseError("[1,]")?.offset == 3)
        #expect(parseError("1 x")?.offset == 2)
        #expect(parseError("01")?.offset == 1)
    }

    @Test("serializer output")
    func serializer() {
        let value = JSONValue.object([
            "b": .array([.integer(-1), .number("1.5e3"), .bool(true), .bool(false), .null]),
            "a": .string("q\"b\\n\n r\r t\t b\u{8} f\u{C} c\u{1}\u{1F} é😀 /"),
            "": .object([:]),
        ])
        #expect(
            value.serialized()
                == #"{"":{},"a":"q\"b\\n\n r\r t\t b\b f\f c\u0001\u001f é😀 /","b":[-1,1.5e3,true,false,null]}"#
        )
    }

    @Test(
        "serializer round trip",
        arguments: [
            JSONValue.string(String((0..<0x80).map { Character(Unicode.Scalar(UInt8($0))) })),
            .string("\u{7F}\u{80}\u{2028}\u{2029}\u{FEFF}😀\u{10FFFF}"),
            .object(["k\u{0}ey": .array([.integer(Int64.min), .integer(Int64.max), .number("-0.0")])]),
            .array([.array([.array([])]), .object(["x": .object(["y": .null])])]),
            .integer(0),
            .null,
        ]
    )
    func serializerRoundTrip(value: JSONValue) throws {
        let text = value.serialized()
        #expect(try JSONValue.parse(Array(text.utf8)) == value)
        #expect(!text.utf8.contains { $0 < 0x20 })
    }
}
