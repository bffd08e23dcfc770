import NIOCore

/// Per-message metadata carried by the `headers` extension (PROTOCOL.md "`headers`"): names
/// of 1 to 64 characters of `a–z 0–9 - _ .`, each at most once, with UTF-8 values, in order.
///
/// Names beginning `smsg-` are the protocol's: the session writes and reads them
/// (`smsg-timeout-ms`) and an application may not set them. A message's headers travel only on
/// a session where the peer has the `headers` extension too (see ``Session/extensions``).
public struct MessageHeaders: Hashable, Sendable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    /// One header.
    public struct Entry: Hashable, Sendable {
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    /// The entries, in order.
    public private(set) var entries: [Entry] = []

    /// The most bytes a header block holds (its entries, after `block_len`).
    public static let maximumBlockBytes = 16_384
    /// The longest header name.
    public static let maximumNameBytes = 64
    /// The prefix of the names the protocol reserves.
    static let reservedPrefix = "smsg-"
    /// The request's timeout in whole milliseconds, on a REQUEST only.
    static let timeoutName = "smsg-timeout-ms"

    public init() {}

    public init(dictionaryLiteral elements: (String, String)...) {
        for (name, value) in elements {
            self[name] = value
        }
    }

    public init(_ entries: some Sequence<(String, String)>) {
        for (name, value) in entries {
            self[name] = value
        }
    }

    /// The value of `name`; setting one replaces it in place (or appends it), setting nil removes it.
    public subscript(name: String) -> String? {
        get { self.entries.first { $0.name == name }?.value }
        set {
            let index = self.entries.firstIndex { $0.name == name }
            switch (index, newValue) {
            case (let index?, let value?): self.entries[index].value = value
            case (let index?, nil): self.entries.remove(at: index)
            case (nil, let value?): self.entries.append(Entry(name: name, value: value))
            case (nil, nil): break
            }
        }
    }

    public var isEmpty: Bool { self.entries.isEmpty }
    public var count: Int { self.entries.count }

    public func makeIterator() -> IndexingIterator<[Entry]> {
        self.entries.makeIterator()
    }

    public var description: String {
        "[" + self.entries.map { "\($0.name): \($0.value)" }.joined(separator: ", ") + "]"
    }

    /// Whether `name` is a valid header name: 1 to 64 characters of `a–z 0–9 - _ .`.
    public static func isValidName(_ name: String) -> Bool {
        let utf8 = name.utf8
        return (1...Self.maximumNameBytes).contains(utf8.count) && utf8.allSatisfy(Self.isNameByte)
    }

    @inline(__always)
    static func isNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
            return true
        default:
            return false
        }
    }

    // MARK: - Encoding

    /// The bytes of the entries (what `block_len` counts).
    var blockBytes: Int {
        self.entries.reduce(0) { $0 + 1 + $1.name.utf8.count + 2 + $1.value.utf8.count }
    }

    /// Checks the headers an application hands over: valid names, none reserved, values that
    /// fit their length field, and a block within 16,384 bytes once `extraBytes` (what the
    /// session adds) is counted.
    package func validateForSending(extraBytes: Int = 0) throws(MessagingError) {
        for entry in self.entries {
            guard Self.isValidName(entry.name) else {
                throw MessagingError(.invalidHeader, "a header name is 1 to 64 characters of a-z 0-9 - _ .")
            }
            guard !entry.name.hasPrefix(Self.reservedPrefix) else {
                throw MessagingError(.invalidHeader, "header names beginning smsg- are the protocol's")
            }
        }
        guard self.blockBytes + extraBytes <= Self.maximumBlockBytes else {
            throw MessagingError(.invalidHeader, "the headers take more than 16384 bytes")
        }
    }

    /// Writes the header block: `block_len` (u16), then each entry.
    func writeBlock(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt16(self.blockBytes))
        for entry in self.entries {
            buffer.writeInteger(UInt8(entry.name.utf8.count))
            buffer.writeString(entry.name)
            buffer.writeInteger(UInt16(entry.value.utf8.count))
            buffer.writeString(entry.value)
        }
    }

    // MARK: - Decoding

    /// What a received header block says.
    struct Received {
        /// The headers, without the reserved ones.
        var headers = MessageHeaders()
        /// `smsg-timeout-ms`, when the block has it.
        var timeoutMilliseconds: Int?
    }

    /// Reads and checks the header block at the front of `payload` (just after the topic):
    /// every rule of PROTOCOL.md "`headers`". With `keep` false the entries are only checked.
    static func readBlock(
        _ payload: inout ByteBuffer,
        isRequest: Bool,
        keep: Bool
    ) throws(ProtocolViolation) -> Received {
        guard let blockLength = payload.readInteger(as: UInt16.self) else {
            throw .protocolError("DATA payload too short for its header block")
        }
        guard blockLength <= Self.maximumBlockBytes else {
            throw .protocolError("header block longer than 16384 bytes")
        }
        guard var block = payload.readSlice(length: Int(blockLength)) else {
            throw .protocolError("DATA payload too short for its header block")
        }
        var received = Received()
        var names: [ByteBuffer] = []
        while block.readableBytes > 0 {
            let nameLength = Int(block.readInteger(as: UInt8.self)!)
            guard (1...Self.maximumNameBytes).contains(nameLength) else {
                throw .protocolError("header name length must be 1 to 64")
            }
            guard let name = block.readSlice(length: nameLength) else {
                throw .protocolError("header entry overruns the block")
            }
            guard name.readableBytesView.allSatisfy(Self.isNameByte) else {
                throw .protocolError("header name has a character outside a-z 0-9 - _ .")
            }
            guard !names.contains(name) else {
                throw .protocolError("duplicate header")
            }
            names.append(name)
            guard let valueLength = block.readInteger(as: UInt16.self),
                let value = block.readSlice(length: Int(valueLength))
            else {
                throw .protocolError("header entry overruns the block")
            }
            guard value.isValidUTF8 else {
                throw .protocolError("header value is not UTF-8")
            }
            let nameString = String(buffer: name)
            if nameString == Self.timeoutName {
                guard isRequest else {
                    throw .protocolError("smsg-timeout-ms on a DATA that is not a REQUEST")
                }
                guard let milliseconds = Self.parseTimeout(value) else {
                    throw .protocolError("smsg-timeout-ms must be 1 to 2147483647 without a leading zero")
                }
                received.timeoutMilliseconds = milliseconds
            } else if keep, !nameString.hasPrefix(Self.reservedPrefix) {
                received.headers.entries.append(Entry(name: nameString, value: String(buffer: value)))
            }
        }
        return received
    }

    /// `smsg-timeout-ms`: 1 to 10 ASCII digits, no leading zero, 1 to 2,147,483,647.
    static func parseTimeout(_ value: ByteBuffer) -> Int? {
        let digits = value.readableBytesView
        guard (1...10).contains(digits.count), digits.first != UInt8(ascii: "0") else { return nil }
        var result = 0
        for digit in digits {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { return nil }
            result = result * 10 + Int(digit - UInt8(ascii: "0"))
        }
        return result <= Int(Int32.max) ? result : nil
    }
}
