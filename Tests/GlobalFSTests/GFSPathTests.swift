import Testing
@testable import GlobalFS
import Storage

@Suite("gfs:// paths")
struct GFSPathTests {
    @Test("parsing: center, components, spaces and UTF-8, empty and '.' components dropped")
    func parse() throws {
        let p = try GFSPath("gfs://wuxi/datasets/zinc22/H20/a b ü.smi")
        #expect(p.center == "wuxi" && p.components == ["datasets", "zinc22", "H20", "a b ü.smi"])
        #expect(p.path == "datasets/zinc22/H20/a b ü.smi" && p.description == "gfs://wuxi/datasets/zinc22/H20/a b ü.smi")
        #expect(try GFSPath("gfs://wuxi").components.isEmpty)
        #expect(try GFSPath("gfs://wuxi/").path == "")
        #expect(try GFSPath("gfs://c-1.xy/a//b/./c/").components == ["a", "b", "c"])
        #expect(try GFSPath("gfs://c/v@1.0/x").components == ["v@1.0", "x"])
        #expect(try GFSPath(utf8: Array("gfs://c/é".utf8)).components == ["é"])
        #expect(try GFSPath(center: "c", path: "a/b") == GFSPath("gfs://c/a/b"))
        #expect(try GFSPath("gfs://c/caf\u{E9}") != GFSPath("gfs://c/cafe\u{301}"))  // two names on disk
        #expect(try GFSPath("gfs://c/" + String(repeating: "n", count: 255)).components[0].utf8.count == 255)
        #expect(GFSPath.isGFS("gfs://c/x") && !GFSPath.isGFS("/local/x") && !GFSPath.isGFS("ferry://h/x"))
    }

    @Test("bad paths are refused")
    func refused() {
        let bad = [
            "ferry://c/x", "gfs:/c/x", "gfs://", "gfs:///x", "gfs://my center/x", "gfs://.c/x", "gfs://c:7/x",
            "gfs://c_y/x", "gfs://-c/x",  // one center-name rule (`CenterName`): as certificates have it
            "gfs://c/..", "gfs://c/a/../b", "gfs://c/a\u{0}b",
            "gfs://c/" + String(repeating: "n", count: 256),
            "gfs://c/" + Array(repeating: String(repeating: "n", count: 200), count: 21).joined(separator: "/"),
            "gfs://" + String(repeating: "c", count: 64) + "/x",
        ]
        for b in bad {
            #expect(throws: CatalogError.self, "\(b.prefix(40))") { try GFSPath(b) }
        }
        #expect(throws: CatalogError.self) { try GFSPath(utf8: Array("gfs://c/".utf8) + [0xFF, 0x41]) }
        #expect(throws: CatalogError.self) { try GFSPath(utf8: Array("gfs://c/".utf8) + [0xC3]) }
    }

    @Test("paths within a dataset: normalised byte-wise")
    func withinDataset() throws {
        #expect(try CatalogPath.normalize("/a//b/./c/") == "a/b/c")
        #expect(try CatalogPath.normalize("") == "" && CatalogPath.normalize("/") == "")
        #expect(throws: CatalogError.self) { try CatalogPath.normalize("a/../b") }
        // "/" then a combining mark is one Swift Character, but still a separator on disk.
        #expect(try CatalogPath.normalize("a/\u{301}b") == "a/\u{301}b")
        #expect(throws: CatalogError.self) { try CatalogPath.normalize("a/\u{301}/..") }
        #expect(CatalogPath.split("a/b/c") == ("a/b", "c") && CatalogPath.split("c") == ("", "c"))
    }

    @Test("globs: SQLite GLOB and PostgreSQL LIKE or regex")
    func globs() {
        #expect(Glob.sqlite("[!x]*.dat") == "[^x]*.dat")
        #expect(Glob.sqlite("a\\*b[") == "a[*]b[[]")
        #expect(Glob.postgres("a_%*.txt") == ("LIKE", "a\\_\\%%.txt"))
        #expect(Glob.postgres("x?\\*") == ("LIKE", "x_*"))
        #expect(Glob.postgres("[ab]*.smi") == ("~", "^[ab].*\\.smi$"))
        #expect(Glob.postgres("[!]a](x)") == ("~", "^[^]a]\\(x\\)$"))
        // The literal start an index can serve, and the end of its range.
        #expect(Glob.literalStart("H17P020.00012*") == "H17P020.00012" && Glob.literalStart("exact.smi") == "exact.smi")
        #expect(Glob.literalStart("*.smi") == "" && Glob.literalStart("[ab]c") == "" && Glob.literalStart("ab?c") == "ab")
        #expect(Glob.literalStart("a\\*b*") == "a*b" && Glob.literalStart("a[b") == "a[b" && Glob.literalStart("a\\") == "a\\")
        #expect(Glob.successor("ab") == "ac" && Glob.successor("a\u{D7FF}") == "a\u{E000}" && Glob.successor("a\u{10FFFF}") == "b")
        #expect(Glob.successor("\u{10FFFF}\u{10FFFF}") == nil && Glob.successor("") == nil && Glob.successor("z/") == "z0")
    }

    @Test("PostgreSQL array text: what literal writes, parse reads back")
    func pgArrays() throws {
        let xs: [String?] = ["plain", "", nil, "NULL", "a\"b", "c\\d", "e,f", "{g}", " sp ", "ü 日本", "\\\""]
        // The server's output quotes only where needed; literal always quotes: both parse.
        #expect(try PGArray.parse(PGArray.literal(xs)) == xs)
        #expect(try PGArray.parse("{plain,\"\",NULL,\"NULL\",\"a\\\"b\",\"c\\\\d\",\"e,f\",\"{g}\",\" sp \",ü日本}")
                == ["plain", "", nil, "NULL", "a\"b", "c\\d", "e,f", "{g}", " sp ", "ü日本"])
        #expect(try PGArray.parse("{}").isEmpty && PGArray.parse("{1,-2}") == ["1", "-2"])
        #expect(PGArray.literal([1, -2, Int64.max]) == "{1,-2,9223372036854775807}")
        #expect(throws: SQLStoreError.self) { try PGArray.parse("1,2") }
    }
}
