package import Messaging
import NIOCore

/// The topics a collaborator handles, as it announced them (PROTOCOL.md 8.5, `interest`): the
/// patterns of its REQUEST handlers and of its other message handlers, and how many REQUESTs
/// it serves at once.
///
/// A pattern is exact, or a trailing wildcard: `jobs.>` matches every topic that begins
/// `jobs.` and goes on (`jobs.resize`, `jobs.video.encode`, not `jobs`), and `>` matches every
/// topic.
public struct TopicInterest: Sendable, Hashable, CustomStringConvertible {
    /// The patterns of the topics whose REQUESTs it answers.
    public var requests: [String]
    /// The patterns of the topics whose other messages it takes.
    public var messages: [String]
    /// The REQUESTs it serves at once (its `maximumConcurrentRequests`), if it said.
    public var capacity: Int?

    /// The most patterns one announcement holds (both lists together).
    public static let maximumPatterns = 1024
    /// The most bytes of one announcement's JSON text.
    public static let maximumDocumentBytes = 16_384
    /// The interest of a side that handles everything (what one with more patterns than
    /// ``maximumPatterns`` announces).
    public static let everything = TopicInterest(requests: [">"], messages: [">"])

    public init(requests: [String], messages: [String], capacity: Int? = nil) {
        self.requests = requests
        self.messages = messages
        self.capacity = capacity
    }

    /// Whether it answers REQUESTs on `topic`.
    public func handlesRequests(on topic: String) -> Bool {
        self.requests.contains { Self.pattern($0, matches: topic) }
    }

    /// Whether it takes other messages on `topic`.
    public func handlesMessages(on topic: String) -> Bool {
        self.messages.contains { Self.pattern($0, matches: topic) }
    }

    /// Whether it handles `topic` at all (requests or messages).
    public func handles(_ topic: String) -> Bool {
        self.handlesRequests(on: topic) || self.handlesMessages(on: topic)
    }

    public var description: String {
        var text = "requests \(self.requests), messages \(self.messages)"
        if let capacity = self.capacity {
            text += ", capacity \(capacity)"
        }
        return text
    }

    // MARK: - Patterns

    /// Whether `pattern` is valid: 1 to 255 bytes of UTF-8.
    public static func isValidPattern(_ pattern: String) -> Bool {
        (1...Message.maximumTopicBytes).contains(pattern.utf8.count)
    }

    /// Whether `pattern` is a wildcard (`>`, or ending `.>`).
    public static func isWildcard(_ pattern: String) -> Bool {
        pattern == ">" || pattern.utf8.last == UInt8(ascii: ">") && pattern.utf8.dropLast().last == UInt8(ascii: ".")
    }

    /// Whether `pattern` matches `topic` (PROTOCOL.md 8.5).
    public static func pattern(_ pattern: String, matches topic: String) -> Bool {
        guard Self.isWildcard(pattern) else { return pattern == topic }
        if pattern == ">" { return true }
        // `P.>` matches `P.` followed by at least one byte.
        let prefix = pattern.utf8.dropLast()
        return topic.utf8.count > prefix.count && topic.utf8.starts(with: prefix)
    }

    // MARK: - The document

    /// The HELLO `metadata` key that carries the document.
    package static let metadataKey = "smsg-interest"
    /// The topic of an update.
    package static let updateTopic = "smsg.interest"

    /// Throws when `topic` is the one announcements use, which applications may not send on.
    package static func refuseReserved(_ topic: String) throws {
        if topic == Self.updateTopic {
            throw MessagingError(.reservedTopic, "\(Self.updateTopic) is reserved for announcing topic interest")
        }
    }

    /// What is wrong with an announcement (never quotes it).
    package struct Invalid: Error, CustomStringConvertible {
        package var problem: String
        package var description: String { "invalid interest announcement: \(self.problem)" }
    }

    /// The document as JSON text, the keys in a fixed order.
    package func encoded() -> String {
        var object: [String: JSONValue] = [
            "requests": .array(self.requests.map { .string($0) }),
            "messages": .array(self.messages.map { .string($0) }),
        ]
        if let capacity = self.capacity {
            object["capacity"] = .integer(Int64(capacity))
        }
        return JSONValue.object(object).serialized()
    }

    /// Reads and checks a document (PROTOCOL.md 8.5).
    package init(document bytes: some Collection<UInt8>) throws(Invalid) {
        guard bytes.count <= Self.maximumDocumentBytes else {
            throw Invalid(problem: "more than \(Self.maximumDocumentBytes) bytes")
        }
        let value: JSONValue
        do {
            value = try JSONValue.parse(bytes)
        } catch {
            throw Invalid(problem: "not JSON (\(error))")
        }
        guard case .object(let object) = value else { throw Invalid(problem: "not a JSON object") }
        func patterns(_ key: String) throws(Invalid) -> [String] {
            guard case .array(let elements)? = object[key] else {
                throw Invalid(problem: "\(key) is missing or not an array")
            }
            var patterns: [String] = []
            for element in elements {
                guard case .string(let pattern) = element, Self.isValidPattern(pattern) else {
                    throw Invalid(problem: "\(key) holds something that is not a pattern of 1 to 255 bytes")
                }
                patterns.append(pattern)
            }
            return patterns
        }
        self.requests = try patterns("requests")
        self.messages = try patterns("messages")
        guard self.requests.count + self.messages.count <= Self.maximumPatterns else {
            throw Invalid(problem: "more than \(Self.maximumPatterns) patterns")
        }
        switch object["capacity"] {
        case nil:
            self.capacity = nil
        case .integer(let capacity)? where (1...65_535).contains(capacity):
            self.capacity = Int(capacity)
        default:
            throw Invalid(problem: "capacity is not an integer from 1 to 65535")
        }
    }

    /// Reads the document of an update: DATA on ``updateTopic`` with no flag.
    package init(update message: Message) throws(Invalid) {
        guard message.flags.isEmpty else { throw Invalid(problem: "an update carries no flag") }
        try self.init(document: message.body.readableBytesView)
    }

    /// What a side with these handlers announces: its patterns, or ``everything`` when they
    /// are more than ``maximumPatterns`` or take more than ``maximumDocumentBytes``.
    package static func announcing(requests: [String], messages: [String], capacity: Int) -> TopicInterest {
        let capacity = min(capacity, 65_535)
        let interest = TopicInterest(requests: requests.sorted(), messages: messages.sorted(), capacity: capacity)
        guard requests.count + messages.count <= Self.maximumPatterns,
            interest.encoded().utf8.count <= Self.maximumDocumentBytes,
            (requests + messages).allSatisfy(Self.isValidPattern)
        else {
            var everything = Self.everything
            everything.capacity = capacity
            return everything
        }
        return interest
    }
}
