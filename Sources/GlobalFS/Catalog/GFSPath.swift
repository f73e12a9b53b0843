import Transfer

/// A name in the global namespace: `gfs://CENTER/PATH`. PATH's leading components name a
/// dataset (names may contain '/', as in "datasets/zinc22", and the last of them may carry
/// @VERSION); the rest is a path within it. Which split is right depends on the datasets that
/// exist, so parsing only checks the text and `Catalog.resolve` does the split.
///
/// No percent-decoding: a name with a space is written with the space (quoted in the shell),
/// as a local path would be. Checked byte-wise, as the kernel sees names: UTF-8 only, no NUL,
/// no "..", each component at most 255 bytes, the path at most 4096. Empty components and
/// "." are dropped ("gfs://c/a//b/" is "gfs://c/a/b").
public struct GFSPath: Sendable, Equatable, CustomStringConvertible {
    public static let scheme = "gfs://"
    public static let componentBytesMax = 255
    public static let pathBytesMax = 4096
    public static let centerBytesMax = CenterName.bytesMax
    /// A dataset name has at most this many components (resolution tries each prefix).
    public static let datasetComponentsMax = 32
    static let datasetNameBytesMax = 1024
    static let versionBytesMax = 128

    public let center: String
    public let components: [String]

    /// The path after the center ("" for the center itself).
    public var path: String { components.joined(separator: "/") }
    public var description: String { GFSPath.scheme + center + "/" + path }

    public static func isGFS(_ text: String) -> Bool { text.utf8.starts(with: scheme.utf8) }

    public init(_ text: String) throws { try self.init(utf8: Array(text.utf8)) }

    /// From raw bytes (a command-line argument as the kernel passed it): refused unless UTF-8.
    /// The text is parsed by `Location.gfsParts` (Transfer), the one gfs:// parser.
    public init<C: Collection>(utf8 bytes: C) throws where C.Element == UInt8 {
        do {
            (center, components) = try Location.gfsParts(Array(bytes))
        } catch let e as TransferError {
            throw CatalogError(.invalid, e.message)
        }
    }

    public init(center: String, path: String) throws {
        try self.init(GFSPath.scheme + center + "/" + path)
    }

    /// Byte-wise: two spellings of a name in different Unicode normal forms are two names.
    public static func == (a: GFSPath, b: GFSPath) -> Bool {
        a.center == b.center && a.components.count == b.components.count
            && zip(a.components, b.components).allSatisfy { sameBytes($0, $1) }
    }

    /// A center's name: `CenterName` (Transfer), the one rule.
    static func validateCenter(_ name: String) throws {
        guard CenterName.isValid(name) else { throw CatalogError(.invalid, "bad center name '\(name)': \(CenterName.rule)") }
    }

    /// A dataset name is a relative path of 1 to `datasetComponentsMax` components without
    /// '@' (it separates the version); a version has no '/' or '@'.
    static func validateDataset(name: String, version: String) throws {
        let slash = UInt8(ascii: "/")
        let parts = name.utf8.split(separator: slash, omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= datasetNameBytesMax, parts.count <= datasetComponentsMax,
              parts.allSatisfy({ !$0.isEmpty && !$0.elementsEqual(".".utf8) && !$0.elementsEqual("..".utf8) && $0.count <= componentBytesMax }),
              !name.utf8.contains(UInt8(ascii: "@")), !name.utf8.contains(0) else {
            throw CatalogError(.invalid, "bad dataset name '\(name)': a relative path of at most \(datasetComponentsMax) names, without '@', '.' or '..'")
        }
        guard version.utf8.count <= versionBytesMax, !version.utf8.contains(where: { $0 == slash || $0 == UInt8(ascii: "@") || $0 == 0 }) else {
            throw CatalogError(.invalid, "bad dataset version '\(version)': at most \(versionBytesMax) bytes, without '/' or '@'")
        }
    }
}
