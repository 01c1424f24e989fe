using Npgsql;

namespace Arrakis.Shared.Storage;

/// <summary>
/// Reads the URL form of a PostgreSQL connection (<c>postgres://user:password@host:5432/database?sslmode=require</c>,
/// as DATABASE_URL and RDS tooling give it) into an Npgsql connection string. User and password are percent-decoded,
/// the port defaults to 5432, and query parameters take libpq names (<c>sslmode</c>, <c>sslrootcert</c>,
/// <c>connect_timeout</c>, <c>application_name</c>, <c>options</c>, ...) or Npgsql keywords (<c>Maximum%20Pool%20Size</c>).
/// The schema comes from <c>search_path=</c> or <c>options=-csearch_path%3D...</c>; without either, the service's name.
/// </summary>
public static class PostgresUrl
{
    const string Expected = "Expected postgres://user:password@host:5432/database?sslmode=require, with special characters in the user and password percent-encoded.";

    // libpq's names for what Npgsql calls differently; any other parameter must be an Npgsql keyword.
    static readonly Dictionary<string, string> LibpqKeywords = new(StringComparer.OrdinalIgnoreCase)
    {
        ["user"] = "Username",
        ["password"] = "Password",
        ["dbname"] = "Database",
        ["port"] = "Port",
        ["sslmode"] = "SSL Mode",
        ["sslrootcert"] = "Root Certificate",
        ["sslcert"] = "SSL Certificate",
        ["sslkey"] = "SSL Key",
        ["sslpassword"] = "SSL Password",
        ["channel_binding"] = "Channel Binding",
        ["gssencmode"] = "GSS Encryption Mode",
        ["connect_timeout"] = "Timeout",
        ["application_name"] = "Application Name",
        ["target_session_attrs"] = "Target Session Attributes",
        ["search_path"] = "Search Path",
        ["options"] = "Options",
    };

    public static bool IsUrl(string value) =>
        value.StartsWith("postgres://", StringComparison.OrdinalIgnoreCase) || value.StartsWith("postgresql://", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The Npgsql connection string for a <c>postgres://</c> or <c>postgresql://</c> URL; a key=value connection string
    /// comes back unchanged. A malformed URL throws <see cref="FormatException"/> whose message never repeats the URL (it
    /// holds the password).
    /// </summary>
    public static string ToNpgsql(string value)
    {
        if (!IsUrl(value))
        {
            return value;
        }

        var rest = value[(value.IndexOf("://", StringComparison.Ordinal) + 3)..];
        // An unencoded '/' or '?' in the password ends the host part early; reading on would send the rest of the
        // password to the server as the database name, or quote it back in an error about the query.
        var hostEnd = rest.IndexOfAny(['/', '?']);
        if (hostEnd >= 0 && rest.IndexOf('@') > hostEnd)
        {
            throw Malformed("an '@' comes after the first '/' or '?' (percent-encode '/', '?' and '@' in the user and password as %2F, %3F and %40)");
        }

        var query = "";
        if (rest.IndexOf('?') is var q and >= 0)
        {
            query = rest[(q + 1)..];
            rest = rest[..q];
        }

        var slash = rest.IndexOf('/');
        var authority = slash < 0 ? rest : rest[..slash];
        var builder = new NpgsqlConnectionStringBuilder { Port = 5432 };
        if (slash >= 0 && rest[(slash + 1)..] is { Length: > 0 } database)
        {
            builder.Database = Uri.UnescapeDataString(database);
        }

        // The last '@': the host cannot hold one, an unencoded password sometimes does.
        if (authority.LastIndexOf('@') is var at and >= 0)
        {
            var user = authority[..at].Split(':', 2);
            if (user[0].Length > 0)
            {
                builder.Username = Uri.UnescapeDataString(user[0]);
            }

            if (user.Length > 1)
            {
                builder.Password = Uri.UnescapeDataString(user[1]);
            }

            authority = authority[(at + 1)..];
        }

        SetHost(builder, authority);
        foreach (var pair in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = pair.IndexOf('=');
            var key = Uri.UnescapeDataString(eq < 0 ? pair : pair[..eq]);
            if (eq < 0)
            {
                throw Malformed($"the parameter '{key}' has no value (write {key}=value)");
            }

            SetParameter(builder, key, Uri.UnescapeDataString(pair[(eq + 1)..]));
        }

        return builder.ConnectionString;
    }

    static void SetHost(NpgsqlConnectionStringBuilder builder, string hostAndPort)
    {
        if (hostAndPort.Contains(',', StringComparison.Ordinal))
        {
            throw Malformed("it names several hosts; give one, or use a key=value connection string (Host=a,b)");
        }

        // [::1]:5432 for IPv6, host:5432 otherwise.
        var close = hostAndPort.StartsWith('[') ? hostAndPort.IndexOf(']', StringComparison.Ordinal) : -1;
        if (hostAndPort.StartsWith('[') && close < 0)
        {
            throw Malformed("an IPv6 host has no closing ']'");
        }

        var colon = hostAndPort.IndexOf(':', close + 1);
        var host = close >= 0 ? hostAndPort[1..close] : colon < 0 ? hostAndPort : hostAndPort[..colon];
        if (host.Length == 0)
        {
            throw Malformed("it has no host");
        }

        builder.Host = Uri.UnescapeDataString(host);
        if (colon >= 0)
        {
            builder.Port = int.TryParse(hostAndPort[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) && port is > 0 and < 65536
                ? port
                : throw Malformed("the port is not a number from 1 to 65535");
        }
        else if (close >= 0 && close != hostAndPort.Length - 1)
        {
            throw Malformed("an IPv6 host is followed by something other than :port");
        }
    }

    static void SetParameter(NpgsqlConnectionStringBuilder builder, string key, string value)
    {
        var keyword = LibpqKeywords.GetValueOrDefault(key, key);
        if (!builder.ContainsKey(keyword))
        {
            throw Malformed($"'{key}' is neither a libpq parameter Npgsql supports (sslmode, sslrootcert, connect_timeout, application_name, options, ...) nor an Npgsql keyword");
        }

        if (keyword == "SSL Mode")
        {
            value = value.Replace("-", "", StringComparison.Ordinal); // libpq's verify-full is Npgsql's VerifyFull
        }
        else if (keyword == "Options")
        {
            (value, var searchPath) = TakeSearchPath(value);
            builder.SearchPath = searchPath ?? builder.SearchPath;
            if (value.Length == 0)
            {
                return;
            }
        }

        try
        {
            builder[keyword] = value;
        }
        catch (ArgumentException)
        {
            throw Malformed($"the value of '{key}' is not one Npgsql accepts for {keyword}");
        }
    }

    /// <summary>
    /// Takes <c>-c search_path=x</c> (also <c>-csearch_path=x</c>, <c>--search_path=x</c>) out of libpq's options: a
    /// search_path there would lose to the Search Path this service always sends, so it becomes that Search Path.
    /// </summary>
    static (string Options, string? SearchPath) TakeSearchPath(string options)
    {
        var kept = new List<string>();
        string? searchPath = null;
        var words = options.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        for (var i = 0; i < words.Length; i++)
        {
            var start = i;
            var setting = words[i] switch
            {
                "-c" when i + 1 < words.Length => words[++i],
                ['-', '-', .. var s] => s,
                ['-', 'c', .. var s] => s,
                _ => null,
            };
            if (setting?.StartsWith("search_path=", StringComparison.OrdinalIgnoreCase) == true)
            {
                searchPath = setting["search_path=".Length..];
            }
            else
            {
                kept.AddRange(words[start..(i + 1)]);
            }
        }

        return (string.Join(' ', kept), searchPath);
    }

    static FormatException Malformed(string problem) => new($"Not a usable PostgreSQL URL: {problem}. {Expected}");
}
