namespace Arrakis.Finn.Routing;

/// <summary>Draws from Beta(α, β) as X/(X+Y) with X ~ Gamma(α), Y ~ Gamma(β) (Marsaglia–Tsang), from a caller's RNG.</summary>
public static class BetaSampler
{
    public static double Sample(Random rng, double alpha, double beta)
    {
        var x = Gamma(rng, alpha);
        var y = Gamma(rng, beta);
        return x + y <= 0 ? 0.5 : x / (x + y);
    }

    public static double Gamma(Random rng, double shape)
    {
        if (shape < 1)
        {
            // Boost: Gamma(a) = Gamma(a + 1) · U^(1/a).
            return Gamma(rng, shape + 1) * Math.Pow(1 - rng.NextDouble(), 1 / shape);
        }

        var d = shape - (1.0 / 3);
        var c = 1 / Math.Sqrt(9 * d);
        while (true)
        {
            double x, v;
            do
            {
                x = Normal(rng);
                v = 1 + (c * x);
            }
            while (v <= 0);

            v = v * v * v;
            var u = 1 - rng.NextDouble();
            if (u < 1 - (0.0331 * x * x * x * x) || Math.Log(u) < (0.5 * x * x) + (d * (1 - v + Math.Log(v))))
            {
                return d * v;
            }
        }
    }

    static double Normal(Random rng)
    {
        var u1 = 1 - rng.NextDouble();
        var u2 = rng.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
