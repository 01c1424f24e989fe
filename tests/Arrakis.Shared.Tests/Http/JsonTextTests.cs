using System.Text;
using System.Text.Json;
using Arrakis.Shared.Http;

namespace Arrakis.Shared.Tests.Http;

public sealed class JsonTextTests
{
    static JsonElement Parse(byte[] utf8)
    {
        using var doc = JsonDocument.Parse(utf8);
        return doc.RootElement.Clone();
    }

    static JsonElement Parse(string json) => Parse(Encoding.UTF8.GetBytes(json));

    /// <summary><paramref name="json"/> with <c>#</c> replaced by the byte <paramref name="bad"/>.</summary>
    static JsonElement WithByte(string json, byte bad) =>
        Parse([.. Encoding.UTF8.GetBytes(json).Select(b => b == (byte)'#' ? bad : b)]);

    [Theory]
    [InlineData("""{"prompt":"hi"}""")]
    [InlineData("""{"emoji":"\ud83d\ude00","escaped":"\u00e9\n\t\"\\","raw":"é😀"}""")]
    [InlineData("""{"text":"\\ud800 is six characters here, not an escape"}""")]
    [InlineData("""[1,true,null,{"a":[{"b":"c"}]}]""")]
    [InlineData("\"\"")]
    public void Valid_text_passes(string json)
    {
        var root = Parse(json);
        Assert.Null(JsonText.FindInvalid(root));
        Assert.Null(JsonText.Check(root));
    }

    [Theory]
    [InlineData("""{"prompt":"x\ud800y"}""", "prompt")]
    [InlineData("""{"prompt":"a\u0000b"}""", "prompt")]
    [InlineData("""{"prompt":"\udc00"}""", "prompt")]
    [InlineData("""{"prompt":"\udc00\ud800"}""", "prompt")]
    [InlineData("""{"prompt":"\ud800\u0041"}""", "prompt")]
    [InlineData("""{"prompt":"end\ud83d"}""", "prompt")]
    [InlineData("""{"messages":[{"role":"user","content":"ok"},{"role":"user","content":"\ud800"}]}""", "messages[1].content")]
    [InlineData("""{"payload":{"authorization":{"from":"\udfff"}}}""", "payload.authorization.from")]
    [InlineData("""{"odd name":{"x.y":"\ud800"}}""", "['odd name']['x.y']")]
    [InlineData("""["\ud800"]""", "[0]")]
    [InlineData("\"\\ud800\"", "body")]
    [InlineData("""{"ok":"fine","\ud800":1}""", "body")]
    [InlineData("""{"outer":{"\udc00":1}}""", "outer")]
    public void A_lone_surrogate_is_found_and_named(string json, string field)
    {
        var root = Parse(json);
        Assert.Equal(field, JsonText.FindInvalid(root));
        var error = JsonText.Check(root);
        Assert.Equal(field, error!.Field);
        Assert.StartsWith(field + " is not valid text", error.Detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0xff)]
    [InlineData(0x80)]
    [InlineData(0xc3)] // a lead byte with no continuation
    [InlineData(0xed)] // the lead of an encoded surrogate (ED A0 80) without the rest
    public void Invalid_utf8_in_a_value_or_a_name_is_found(byte bad)
    {
        Assert.Equal("source", JsonText.FindInvalid(WithByte("""{"routingKey":"nft:1","source":"a#b"}""", bad)));
        Assert.Equal("body", JsonText.FindInvalid(WithByte("""{"routingKey":"nft:1","s#":"ab"}""", bad)));
    }

    [Fact]
    public void An_encoded_surrogate_and_an_overlong_encoding_are_invalid_utf8()
    {
        Assert.Equal("a", JsonText.FindInvalid(Parse([.. "{\"a\":\""u8, 0xed, 0xa0, 0x80, .. "\"}"u8])));
        Assert.Equal("a", JsonText.FindInvalid(Parse([.. "{\"a\":\""u8, 0xc0, 0xaf, .. "\"}"u8])));
    }

    [Theory]
    [InlineData("""{"a":1,"a":2}""", "a")]
    [InlineData("""{"a":1,"\u0061":2}""", "a")]
    [InlineData("""{"payload":{"authorization":{"value":"1","value":"2"}}}""", "payload.authorization.value")]
    [InlineData("""{"messages":[{"role":"user"},{"role":"user","role":"system"}]}""", "messages[1].role")]
    public void A_repeated_name_is_found_and_named(string json, string field)
    {
        var root = Parse(json);
        Assert.Null(JsonText.FindInvalid(root));
        Assert.False(JsonText.UniqueNames(root, out var duplicate));
        Assert.Equal(field, duplicate);
        Assert.Equal(field, JsonText.Check(root)!.Field);
    }

    [Fact]
    public void The_same_name_in_different_objects_is_not_a_repeat()
    {
        var root = Parse("""{"a":{"id":1},"b":{"id":2},"c":[{"id":3},{"id":4}]}""");
        Assert.True(JsonText.UniqueNames(root, out var duplicate));
        Assert.Null(duplicate);
    }
}
