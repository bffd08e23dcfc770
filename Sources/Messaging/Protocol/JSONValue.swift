/// A JSON value (RFC 8259), as parsed strictly by ``parse(_:)`` and written by ``serialized()``.
///
/// Numbers keep the distinction smsg/1 needs: a number with no fraction or exponent that fits
/// `Int64` is an ``integer(_:)``; every other number is kept as its text in ``number(_:)``.
package enum JSONValue: Hashable, Sendable {
    /// An object. For duplicate keys the last one wins.
    case object([String: JSONValue])
    /// An array.
    case array([JSONValue])
    /// A string.
    case string(String)
    /// A number with no fraction or exponent that fits `Int64`. `-0` is `0`.
    case integer(Int64)
    /// Any other number — one with a fraction or an exponent, or an integer too large for
    /// `Int64` — as its text exactly as received.
    case number(String)
    /// `true` or `false`.
    case bool(Bool)
    /// `null`.
    case null

    /// The deepest nesting of arrays and objects ``parse(_:)`` accepts.
    static let maximumDepth = 64

    /// Parses `bytes` as exactly one JSON value, with optional whitespace (space, tab, CR, LF)
    /// around it.
    ///
    /// The input must be UTF-8 (no overlong forms, no encoded surrogates); anything RFC 8259
    /// does not allow is rejected, including comments, trailing commas, leading zeros, `NaN`
    /// and unpaired surrogate escapes, as is nesting deeper than ``maximumDepth``.
    package static func parse(_ bytes: some Collection<UInt8>) throws(JSONParseError) -> JSONValue {
        var parser = JSONParser(bytes: Array(bytes))
        return try parser.parseDocument()
    }

    /// Whether this is a number with no fraction or exponent (an ``integer(_:)``, or a
    /// ``number(_:)`` too large for `Int64`).
    var isIntegral: Bool {
        switch self {
        case .integer:
            return true
        case .number(let text):
            return !text.utf8.contains { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }
        default:
            return false
        }
    }

    /// The compact JSON text of this value: no whitespace, object keys sorted, strings escaped
    /// (`"`, `\` and control characters; everything else as UTF-8).
    package func serialized() -> String {
        var output: [UInt8] = []
        self.serialize(into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    /// Appends the compact JSON text of this value to `output` as UTF-8.
    func serialize(into output: inout [UInt8]) {
        switch self {
        case .object(let members):
            output.append(UInt8(ascii: "{"))
            var first = true
            for (key, value) in members.sorted(by: { $0.key < $1.key }) {
                if !first {
                    output.append(UInt8(ascii: ","))
                }
                first = false
                Self.serialize(string: key, into: &output)
                output.append(UInt8(ascii: ":"))
                value.serialize(into: &output)
            }
            output.append(UInt8(ascii: "}"))
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            for (index, element) in elements.enumerated() {
                if index > 0 {
                    output.append(UInt8(ascii: ","))
                }
                element.serialize(into: &output)
            }
            output.append(UInt8(ascii: "]"))
        case .string(let string):
            Self.serialize(string: string, into: &output)
        case .integer(let value):
            output.append(contentsOf: String(value).utf8)
        case .number(let text):
            output.append(contentsOf: text.utf8)
        case .bool(let value):
            output.append(contentsOf: (value ? "true" : "false").utf8)
        case .null:
            output.append(contentsOf: "null".utf8)
        }
    }

    /// Appends `string` to `output` as a quoted, escaped JSON string.
    static func serialize(string: String, into output: inout [UInt8]) {
        let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)
        output.append(UInt8(ascii: "\""))
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                output.append(UInt8(ascii: "\\"))
                output.append(byte)
            case 0x0A:
                output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D:
                output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09:
                output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x08:
                output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C:
                output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x00..<0x20:
                output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                output.append(hexDigits[Int(byte >> 4)])
                output.append(hexDigits[Int(byte & 0x0F)])
            default:
                output.append(byte)
            }
        }
        output.append(UInt8(ascii: "\""))
    }
}

/// Why ``JSONValue/parse(_:)`` rejected its input.
package struct JSONParseError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The offset in bytes of the problem in the input.
    var offset: Int
    /// What is wrong, in a few words; never quotes the input.
    var message: String

    package var description: String {
        "\(self.message) at byte \(self.offset)"
    }
}

/// A recursive-descent RFC 8259 parser over a byte array.
private struct JSONParser {
    let bytes: [UInt8]
    var index = 0

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    mutating func parseDocument() throws(JSONParseError) -> JSONValue {
        self.skipWhitespace()
        let value = try self.parseValue(depth: 0)
        self.skipWhitespace()
        guard self.index == self.bytes.count else {
            throw self.failure("unexpected data after the JSON value")
        }
        return value
    }

    // MARK: Values

    /// Parses the value at `index`; `depth` is the number of arrays and objects around it.
    private mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
        guard self.index < self.bytes.count else {
            throw self.failure("unexpected end of input")
        }
        switch self.bytes[self.index] {
        case UInt8(ascii: "{"):
            return try self.parseObject(depth: depth + 1)
        case UInt8(ascii: "["):
            return try self.parseArray(depth: depth + 1)
        case UInt8(ascii: "\""):
            return .string(try self.parseString())
        case UInt8(ascii: "t"):
            try self.parseLiteral("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try self.parseLiteral("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try self.parseLiteral("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try self.parseNumber()
        default:
            throw self.failure("unexpected character")
        }
    }

    private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth <= JSONValue.maximumDepth else {
            throw self.failure("nesting too deep")
        }
        self.index += 1  // {
        var members: [String: JSONValue] = [:]
        self.skipWhitespace()
        if self.peek() == UInt8(ascii: "}") {
            self.index += 1
            return .object(members)
        }
        while true {
            self.skipWhitespace()
            guard self.peek() == UInt8(ascii: "\"") else {
                throw self.failure(self.index < self.bytes.count ? "expected a string key" : "unexpected end of input")
            }
            let key = try self.parseString()
            self.skipWhitespace()
            guard self.peek() == UInt8(ascii: ":") else {
                throw self.failure(self.index < self.bytes.count ? "expected ':'" : "unexpected end of input")
            }
            self.index += 1
            self.skipWhitespace()
            members[key] = try self.parseValue(depth: depth)
            self.skipWhitespace()
            switch self.peek() {
            case UInt8(ascii: ","):
                self.index += 1
            case UInt8(ascii: "}"):
                self.index += 1
                return .object(members)
            case nil:
                throw self.failure("unexpected end of input")
            default:
                throw self.failure("expected ',' or '}'")
            }
        }
    }

    private mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth <= JSONValue.maximumDepth else {
            throw self.failure("nesting too deep")
        }
        self.index += 1  // [
        var elements: [JSONValue] = []
        self.skipWhitespace()
        if self.peek() == UInt8(ascii: "]") {
            self.index += 1
            return .array(elements)
        }
        while true {
            self.skipWhitespace()
            elements.append(try self.parseValue(depth: depth))
            self.skipWhitespace()
            switch self.peek() {
            case UInt8(ascii: ","):
                self.index += 1
            case UInt8(ascii: "]"):
                self.index += 1
                return .array(elements)
            case nil:
                throw self.failure("unexpected end of input")
            default:
                throw self.failure("expected ',' or ']'")
            }
        }
    }

    private mutating func parseLiteral(_ literal: StaticString) throws(JSONParseError) {
        let count = literal.utf8CodeUnitCount
        let matches = literal.withUTF8Buffer { expected in
            self.bytes.count - self.index >= count
                && zip(expected, self.bytes[self.index..<self.index + count]).allSatisfy { $0 == $1 }
        }
        guard matches else {
            throw self.failure("unexpected character")
        }
        self.index += count
    }

    // MARK: Numbers

    private mutating func parseNumber() throws(JSONParseError) -> JSONValue {
        let start = self.index
        let negative = self.peek() == UInt8(ascii: "-")
        if negative {
            self.index += 1
        }
        guard let first = self.peek(), Self.isDigit(first) else {
            throw self.failure("invalid number")
        }
        if first == UInt8(ascii: "0") {
            self.index += 1
            if let next = self.peek(), Self.isDigit(next) {
                throw self.failure("leading zero in number")
            }
        } else {
            self.skipDigits()
        }
        let integerEnd = self.index
        var isInteger = true
        if self.peek() == UInt8(ascii: ".") {
            isInteger = false
            self.index += 1
            guard let digit = self.peek(), Self.isDigit(digit) else {
                throw self.failure("expected a digit after '.'")
            }
            self.skipDigits()
        }
        if self.peek() == UInt8(ascii: "e") || self.peek() == UInt8(ascii: "E") {
            isInteger = false
            self.index += 1
            if self.peek() == UInt8(ascii: "+") || self.peek() == UInt8(ascii: "-") {
                self.index += 1
            }
            guard let digit = self.peek(), Self.isDigit(digit) else {
                throw self.failure("expected a digit in the exponent")
            }
            self.skipDigits()
        }
        let text = self.bytes[start..<self.index]
        if isInteger {
            // Accumulate negatively so that Int64.min fits.
            var value: Int64 = 0
            var overflow = false
            for byte in self.bytes[(negative ? start + 1 : start)..<integerEnd] {
                let multiplied = value.multipliedReportingOverflow(by: 10)
                let subtracted = multiplied.partialValue.subtractingReportingOverflow(Int64(byte - UInt8(ascii: "0")))
                value = subtracted.partialValue
                if multiplied.overflow || subtracted.overflow {
                    overflow = true
                    break
                }
            }
            if !overflow && (negative || value != Int64.min) {
                return .integer(negative ? value : -value)
            }
        }
        return .number(String(decoding: text, as: UTF8.self))
    }

    private mutating func skipDigits() {
        while let byte = self.peek(), Self.isDigit(byte) {
            self.index += 1
        }
    }

    private static func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }

    // MARK: Strings

    /// Parses the string whose opening quote is at `index`.
    private mutating func parseString() throws(JSONParseError) -> String {
        self.index += 1  // "
        var segmentStart = self.index
        var hasEscapes = false
        var buffer: [UInt8] = []
        while true {
            guard self.index < self.bytes.count else {
                throw self.failure("unterminated string")
            }
            let byte = self.bytes[self.index]
            switch byte {
            case UInt8(ascii: "\""):
                let string: String
                if hasEscapes {
                    buffer.append(contentsOf: self.bytes[segmentStart..<self.index])
                    string = String(decoding: buffer, as: UTF8.self)
                } else {
                    string = String(decoding: self.bytes[segmentStart..<self.index], as: UTF8.self)
                }
                self.index += 1
                return string
            case UInt8(ascii: "\\"):
                hasEscapes = true
                buffer.append(contentsOf: self.bytes[segmentStart..<self.index])
                try self.parseEscape(into: &buffer)
                segmentStart = self.index
            case 0x00..<0x20:
                throw self.failure("unescaped control character in string")
            case 0x20..<0x80:
                self.index += 1
            default:
                try self.skipMultibyteScalar()
            }
        }
    }

    /// Validates the UTF-8 sequence of two to four bytes at `index` and moves past it.
    ///
    /// Follows Table 3-7 of the Unicode Standard: no overlong forms, no surrogates, nothing
    /// above U+10FFFF.
    private mutating func skipMultibyteScalar() throws(JSONParseError) {
        let lead = self.bytes[self.index]
        let length: Int
        var secondRange: ClosedRange<UInt8> = 0x80...0xBF
        switch lead {
        case 0xC2...0xDF:
            length = 2
        case 0xE0:
            length = 3
            secondRange = 0xA0...0xBF
        case 0xE1...0xEC, 0xEE...0xEF:
            length = 3
        case 0xED:
            length = 3
            secondRange = 0x80...0x9F
        case 0xF0:
            length = 4
            secondRange = 0x90...0xBF
        case 0xF1...0xF3:
            length = 4
        case 0xF4:
            length = 4
            secondRange = 0x80...0x8F
        default:
            throw self.failure("invalid UTF-8")
        }
        guard self.bytes.count - self.index >= length, secondRange.contains(self.bytes[self.index + 1]) else {
            throw self.failure("invalid UTF-8")
        }
        for offset in 2..<length where !(0x80...0xBF).contains(self.bytes[self.index + offset]) {
            throw self.failure("invalid UTF-8")
        }
        self.index += length
    }

    /// Parses the escape sequence whose backslash is at `index`, appending its UTF-8 to `buffer`.
    private mutating func parseEscape(into buffer: inout [UInt8]) throws(JSONParseError) {
        let escapeStart = self.index
        self.index += 1  // \
        guard let letter = self.peek() else {
            throw self.failure("unterminated string")
        }
        self.index += 1
        switch letter {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"):
            buffer.append(letter)
        case UInt8(ascii: "b"):
            buffer.append(0x08)
        case UInt8(ascii: "f"):
            buffer.append(0x0C)
        case UInt8(ascii: "n"):
            buffer.append(0x0A)
        case UInt8(ascii: "r"):
            buffer.append(0x0D)
        case UInt8(ascii: "t"):
            buffer.append(0x09)
        case UInt8(ascii: "u"):
            let first = try self.parseHex4()
            var value = first
            switch first {
            case 0xD800...0xDBFF:
                guard self.peek() == UInt8(ascii: "\\"), self.peek(1) == UInt8(ascii: "u") else {
                    throw self.failure("unpaired surrogate escape", at: escapeStart)
                }
                self.index += 2
                let second = try self.parseHex4()
                guard (0xDC00...0xDFFF).contains(second) else {
                    throw self.failure("unpaired surrogate escape", at: escapeStart)
                }
                value = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            case 0xDC00...0xDFFF:
                throw self.failure("unpaired surrogate escape", at: escapeStart)
            default:
                break
            }
            guard let scalar = Unicode.Scalar(value) else {
                throw self.failure("invalid escape", at: escapeStart)
            }
            UTF8.encode(scalar) { buffer.append($0) }
        default:
            throw self.failure("invalid escape", at: escapeStart)
        }
    }

    /// Parses four hexadecimal digits at `index`.
    private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = self.peek() else {
                throw self.failure("unterminated string")
            }
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"):
                digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"):
                digit = byte - UInt8(ascii: "A") + 10
            default:
                throw self.failure("invalid \\u escape")
            }
            value = value << 4 | UInt32(digit)
            self.index += 1
        }
        return value
    }

    // MARK: Helpers

    private func peek(_ ahead: Int = 0) -> UInt8? {
        let position = self.index + ahead
        return position < self.bytes.count ? self.bytes[position] : nil
    }

    private mutating func skipWhitespace() {
        while let byte = self.peek(),
            byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
        {
            self.index += 1
        }
    }

    private func failure(_ message: String, at offset: Int? = nil) -> JSONParseError {
        JSONParseError(offset: offset ?? self.index, message: message)
    }
}
