/// The smsg/1 extensions (PROTOCOL.md "Extensions (negotiated in HELLO)"). An extension is in
/// force on a session only when both HELLOs list it; each side lists all it supports.
public struct ProtocolExtensions: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8

    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// `headers`: per-message metadata (DATA flag 0x08), the request timeout and trace context.
    public static let headers = ProtocolExtensions(rawValue: 1 << 0)
    /// `status`: request outcomes (DATA flag 0x10, FAILED).
    public static let status = ProtocolExtensions(rawValue: 1 << 1)
    /// `cancel`: abandoning a request (frame type 0x09, CANCEL).
    public static let cancel = ProtocolExtensions(rawValue: 1 << 2)
    /// `interest`: the topics a side handles (HELLO metadata `smsg-interest`, DATA on
    /// `smsg.interest`). Its meaning is the Cluster layer's: only a leader and a collaborator
    /// list it, so a plain session never gets an announcement it would hand to its application.
    public static let interest = ProtocolExtensions(rawValue: 1 << 3)

    /// The session layer's extensions: what our HELLOs list by default. (``interest`` is
    /// added by the Cluster layer's leader and collaborator.)
    public static let all: ProtocolExtensions = [.headers, .status, .cancel]

    static let named: [(String, ProtocolExtensions)] = [
        ("headers", .headers), ("status", .status), ("cancel", .cancel), ("interest", .interest),
    ]

    /// The names, in the order PROTOCOL.md gives them.
    public var names: [String] {
        Self.named.compactMap { self.contains($0.1) ? $0.0 : nil }
    }

    /// The extensions among `names` that this implementation knows (unknown names are ignored).
    public init(names: some Sequence<String>) {
        self = []
        for name in names {
            if let known = Self.named.first(where: { $0.0 == name }) {
                self.insert(known.1)
            }
        }
    }

    public var description: String { "[\(self.names.joined(separator: ", "))]" }

    /// Whether `name` is a valid extension name: 1 to 64 characters of `a–z 0–9 -`.
    static func isValidName(_ name: String) -> Bool {
        let utf8 = name.utf8
        guard (1...64).contains(utf8.count) else { return false }
        return utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "-")
        }
    }
}
